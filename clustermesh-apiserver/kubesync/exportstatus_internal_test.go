package kubesync

import (
	"testing"

	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

func TestExportConditionsFollowTheSyncState(t *testing.T) {
	s := newIdleSyncer(t)
	se := &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: "db", Name: "pg", Generation: 3}}
	key := meshapi.ServiceKey("east", "db", "pg")

	type state struct {
		reason          string
		desired, inEtcd bool
	}
	type want struct{ valid, ready string } // reasons; "" = no write
	for name, tc := range map[string]struct {
		state
		want
	}{
		"published":                  {state{"", true, true}, want{"Valid", "Exported"}},
		"not written yet":            {state{"", true, false}, want{"Valid", "Pending"}},
		"too large":                  {state{ReasonInvalid, false, false}, want{"Valid", "Failed"}},
		"no Service":                 {state{ReasonNoService, false, false}, want{"NoService", "Failed"}},
		"ExternalName":               {state{ReasonExternalName, false, false}, want{"InvalidServiceType", "Failed"}},
		"export not looked at yet":   {state{ReasonNotExported, false, false}, want{}},
		"service not computed yet":   {state{"", false, false}, want{}},
		"withdrawal not written yet": {state{ReasonNoService, false, true}, want{"NoService", "Failed"}},
	} {
		t.Run(name, func(t *testing.T) {
			s.mu.Lock()
			s.notExported, s.desired, s.actual = map[string]reasonKey{}, map[string]string{}, map[string]string{}
			if tc.reason != "" {
				s.notExported[key] = reasonKey{meshapi.KindServices, tc.reason}
			}
			if tc.desired {
				s.desired[key] = "{}"
			}
			if tc.inEtcd {
				s.actual[key] = "{}"
			}
			s.mu.Unlock()
			conds, ok := s.exportConditions(se)
			if tc.want == (want{}) {
				require.False(t, ok, "nothing to write yet")
				return
			}
			require.True(t, ok)
			require.Len(t, conds, 2)
			require.Equal(t, string(mcsv1beta1.ServiceExportConditionValid), conds[0].Type)
			require.Equal(t, tc.valid, conds[0].Reason)
			require.Equal(t, metav1.ConditionStatus(map[bool]string{true: "True", false: "False"}[tc.valid == "Valid"]), conds[0].Status)
			require.Equal(t, string(mcsv1beta1.ServiceExportConditionReady), conds[1].Type)
			require.Equal(t, tc.ready, conds[1].Reason)
			require.Equal(t, metav1.ConditionStatus(map[bool]string{true: "True", false: "False"}[tc.ready == "Exported"]), conds[1].Status)
			for _, c := range conds {
				require.Equal(t, int64(3), c.ObservedGeneration)
			}
		})
	}
}

func TestConditionsDifferIgnoresOnlyTransitionTimeAndForeignConditions(t *testing.T) {
	want := []metav1.Condition{
		{Type: "Valid", Status: metav1.ConditionTrue, Reason: "Valid", Message: "ok", ObservedGeneration: 2},
		{Type: "Ready", Status: metav1.ConditionTrue, Reason: "Exported", Message: "ok", ObservedGeneration: 2},
	}
	have := func(mut func([]metav1.Condition)) []metav1.Condition {
		h := []metav1.Condition{
			{Type: "Conflict", Status: metav1.ConditionTrue, Reason: "PortConflict"},
			{Type: "Valid", Status: metav1.ConditionTrue, Reason: "Valid", Message: "ok", ObservedGeneration: 2, LastTransitionTime: metav1.Unix(1, 0)},
			{Type: "Ready", Status: metav1.ConditionTrue, Reason: "Exported", Message: "ok", ObservedGeneration: 2, LastTransitionTime: metav1.Unix(2, 0)},
		}
		if mut != nil {
			mut(h)
		}
		return h
	}
	require.False(t, conditionsDiffer(have(nil), want), "same conditions, other times, plus the importer's")
	for name, mut := range map[string]func([]metav1.Condition){
		"status":              func(h []metav1.Condition) { h[2].Status = metav1.ConditionFalse },
		"reason":              func(h []metav1.Condition) { h[1].Reason = "Other" },
		"message":             func(h []metav1.Condition) { h[2].Message = "stale" },
		"observed generation": func(h []metav1.Condition) { h[1].ObservedGeneration = 1 },
		"missing":             func(h []metav1.Condition) { h[2].Type = "Gone" },
	} {
		require.True(t, conditionsDiffer(have(mut), want), name)
	}
}
