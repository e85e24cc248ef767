package lab_test

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/podmesh/podmesh/test/lab"
)

var (
	imagesOnce sync.Once
	imagesSet  lab.ImageSet
	imagesErr  error
)

// labImages builds the images real nodes import (agent,
// clustermesh-apiserver, pause, echo, from this checkout) once per test
// binary, into a directory removed with the test binary's other files.
func labImages(t *testing.T) lab.ImageSet {
	t.Helper()
	imagesOnce.Do(func() {
		dir, err := os.MkdirTemp("", "podmesh-lab-images-")
		if err != nil {
			imagesErr = err
			return
		}
		imagesDir = dir
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		imagesSet, imagesErr = lab.BuildImages(ctx, dir)
	})
	if imagesErr != nil {
		t.Fatalf("build images: %v", imagesErr)
	}
	return imagesSet
}
