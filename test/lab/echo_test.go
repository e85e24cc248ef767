package lab

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestUDPReceiverListsEveryMissingSequenceNumber(t *testing.T) {
	r := &UDPReceiver{}
	for _, seq := range []uint64{1, 2, 4, 4, 7, 0, maxUDPSeq + 1} {
		r.record(seq)
	}
	require.Equal(t, []uint64{3, 5, 6, 8, 9}, r.Missing(9), "duplicates, 0 and out-of-range numbers count nothing")
	n, missing := r.Received(9)
	require.Equal(t, 4, n)
	require.Equal(t, []uint64{3, 5, 6, 8, 9}, missing)

	for seq := uint64(10); seq <= 100; seq++ {
		if seq%2 == 0 {
			r.record(seq)
		}
	}
	n, missing = r.Received(100)
	require.Equal(t, 4+46, n)
	require.Len(t, missing, 20, "Received lists at most 20")
	require.Len(t, r.Missing(100), 50, "Missing lists them all")
}
