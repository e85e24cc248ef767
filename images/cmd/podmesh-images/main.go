// Command podmesh-images builds podmesh's container images, and the lab's,
// as docker-archive tars without a container engine (package
// github.com/podmesh/podmesh/images), and prints one line per image:
// reference, archive, size. `make images` runs it.
//
//	podmesh-images --out bin/images --bin bin [--tag dev]
//
// Load an archive with `ctr -n k8s.io images import <tar>` or
// `docker load -i <tar>`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/podmesh/podmesh/images"
)

func main() {
	var o images.Options
	flag.StringVar(&o.OutDir, "out", "bin/images", "directory for the <name>.tar archives")
	flag.StringVar(&o.Tag, "tag", images.DefaultTag, "tag of the podmesh images")
	flag.StringVar(&o.BinDir, "bin", "bin", "directory of the tool binaries (coredns, from `make tools`); empty: no CoreDNS image")
	flag.BoolVar(&o.GoBuild, "go-build", true, "build the static binaries with CGO_ENABLED=0 go build (run inside the podmesh module); false: take them from --bin")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "podmesh-images:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o images.Options) error {
	imgs, err := images.Build(ctx, o)
	if err != nil {
		return err
	}
	for _, img := range imgs {
		st, err := os.Stat(img.Archive)
		if err != nil {
			return err
		}
		fmt.Printf("%-48s %s %.1f MB\n", img.Ref, img.Archive, float64(st.Size())/1e6)
	}
	return nil
}
