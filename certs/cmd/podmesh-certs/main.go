package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"
)

const usageText = `podmesh-certs creates the certificates of a podmesh mesh and the Secrets that carry them.

Usage:
  podmesh-certs <command> [flags]

Commands:
  init           create a cluster's CA                        (ca.crt, ca.key)
  server         issue the proxy's serving certificate        (server.crt, server.key)
  server-secret  render the clustermesh-apiserver TLS Secret  (server.crt/key + ca.crt)
  peer           issue a client certificate for a peer        (peers/<peer>.crt, .key)
  connect        render the Secret a peer's agents mount, add the peer to allowed-peers
  allowed-peers  print the --allowed-peers value for this cluster's clustermesh-apiserver
  cache-secret   render the Secret this cluster's own agents mount to read its cache
                 (client certificate CN local-<cluster>; never a peer's)
  rotate         reissue server/peer certificates before they expire (same CA)
  verify         check a cluster directory or an etcd-client config file

Directory convention (one --dir per cluster, kept by that cluster's operator):
  <dir>/ca.crt, ca.key           the cluster's CA, CN podmesh-ca-<cluster>
  <dir>/server.crt, server.key   serving certificate of the cluster's proxy
  <dir>/peers/<peer>.crt, .key   client certificate CN remote-<peer>, signed by
                                 this cluster's CA, handed to cluster <peer>
  <dir>/allowed-peers            CNs this cluster's proxy accepts, one per line

Example, cluster east serving cluster west (west's agents read east):
  podmesh-certs init    --dir pki/east --cluster east
  podmesh-certs server  --dir pki/east --ip 192.0.2.10 --dns mesh.east.example
  podmesh-certs peer    --dir pki/east --peer west
  podmesh-certs connect --dir pki/east --peer west --address 192.0.2.10 --out west-clustermesh.yaml
  kubectl --context west apply -f west-clustermesh.yaml
  podmesh-certs allowed-peers --dir pki/east     # -> remote-west, for east's ConfigMap

Durations accept Go syntax (720h) and days (30d). Keys are written 0600 and
nothing is overwritten without --force. Run "podmesh-certs <command> -h" for
the flags of a command.
`

// cli carries what a command needs from its environment; tests build their
// own.
type cli struct {
	stdout io.Writer
	stderr io.Writer
	now    func() time.Time
}

func main() {
	c := &cli{stdout: os.Stdout, stderr: os.Stderr, now: time.Now}
	if err := c.run(os.Args[1:]); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(os.Stderr, "podmesh-certs: %v\n", err)
		}
		os.Exit(exitCode(err))
	}
}

func exitCode(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	var u usageError
	if errors.As(err, &u) {
		return 2
	}
	return 1
}

// usageError marks a wrong invocation (exit code 2).
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

func (c *cli) run(args []string) error {
	if len(args) == 0 {
		fmt.Fprint(c.stderr, usageText)
		return usagef("no command given")
	}
	cmds := map[string]func([]string) error{
		"init":          c.cmdInit,
		"server":        c.cmdServer,
		"server-secret": c.cmdServerSecret,
		"peer":          c.cmdPeer,
		"connect":       c.cmdConnect,
		"cache-secret":  c.cmdCacheSecret,
		"allowed-peers": c.cmdAllowedPeers,
		"rotate":        c.cmdRotate,
		"verify":        c.cmdVerify,
	}
	name, rest := args[0], args[1:]
	switch name {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(c.stdout, usageText)
		return nil
	}
	cmd, ok := cmds[name]
	if !ok {
		fmt.Fprint(c.stderr, usageText)
		return usagef("unknown command %q", name)
	}
	return cmd(rest)
}

// newFlagSet returns a flag set whose errors are returned, not fatal.
func (c *cli) newFlagSet(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	fs.Usage = func() {
		fmt.Fprintf(c.stderr, "Usage: podmesh-certs %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags and refuses positional arguments.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usagef("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	return nil
}
