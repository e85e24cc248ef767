// Package agentstatus defines the JSON document podmesh-agent serves at
// /status and `podmesh-agent status` prints: one definition for the agent
// that writes it and every reader (the status command, the lab, scripts).
//
// It holds types only and imports nothing of podmesh, so a test harness can
// decode a report without linking the agent. Fields are added, never renamed
// or removed: an older reader ignores what it does not know.
package agentstatus
