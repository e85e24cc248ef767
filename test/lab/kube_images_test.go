package lab_test

import (
	"context"
	"os"
	"testing"

	"github.com/podmesh/podmesh/test/lab"
)

func labImages(t *testing.T) lab.ImageSet {
	s, err := lab.BuildImages(context.Background(), os.Getenv("PODMESH_LAB_IMAGES"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}
