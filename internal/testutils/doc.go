// Package testutils holds the helpers every podmesh test package shares: the
// root check that skips with a reason, and private network namespaces that
// vanish with the test. Waiting on a condition is testify's
// require.Eventually / assert.EventuallyWithT, not a hand-written poller.
//
// It is imported only from tests and test harnesses (internal/, never from
// product code).
package testutils
