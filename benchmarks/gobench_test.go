package main

import (
	"strings"
	"testing"
)

const authOut = `BenchmarkApply/writers=1-2         	    3000	    995884 ns/op	         2.232 p99-ms	      1004 writes/s
BenchmarkApply/writers=64-2        	    3000	    118339 ns/op	        15.86 p99-ms	      8450 writes/s
ok  	jumpgate.dev/jumpgate/auth/raftnode	6.101s
BenchmarkSignUserSSH/software-ecdsa-p256-2         	    3000	     25315 ns/op	     39502 certs/s	         0.2740 p99-ms
BenchmarkSignUserSSH/software-ed25519-2            	    3000	     18333 ns/op	     54547 certs/s	         0.1700 p99-ms
BenchmarkSignUserSSH/softhsm2-ecdsa-p256-2         	    3000	     74312 ns/op	     13457 certs/s	        11.16 p99-ms
ok  	jumpgate.dev/jumpgate/auth/ca	1.009s
`

func TestParseGoBench(t *testing.T) {
	sign, err := parseGoBench(authOut, "BenchmarkSignUserSSH", "certs/s", "p99-ms")
	if err != nil {
		t.Fatal(err)
	}
	apply, err := parseGoBench(authOut, "BenchmarkApply", "writes/s", "p99-ms")
	if err != nil {
		t.Fatal(err)
	}
	if len(sign) != 3 || sign[2].Sub != "softhsm2-ecdsa-p256" || sign[2].Metrics["certs/s"] != 13457 || sign[2].Metrics["ns/op"] != 74312 {
		t.Fatalf("sign: %+v", sign)
	}
	if len(apply) != 2 || apply[1].Sub != "writers=64" || apply[1].Metrics["writes/s"] != 8450 {
		t.Fatalf("apply: %+v", apply)
	}
	r := &authResult{Sign: sign, Apply: apply}
	rows := r.targetRows()
	for _, want := range []string{
		"| certificate issuance, software-ecdsa-p256 ≥ 5000/s | 39502/s | met |",
		"| raft writes with 64 writers ≥ 2000/s | 8450/s | met |",
	} {
		if !strings.Contains(rows, want) {
			t.Errorf("targets lack %q:\n%s", want, rows)
		}
	}
	if strings.Contains(rows, "softhsm2") {
		t.Errorf("the HSM row has no target:\n%s", rows)
	}
	if md := r.markdown(); !strings.Contains(md, "| raft writes, writers 64 | 8450 writes/s | 15.86 ms |") {
		t.Errorf("markdown:\n%s", md)
	}
	if _, err := parseGoBench(authOut, "BenchmarkApply", "certs/s"); err == nil {
		t.Error("a missing metric was not reported")
	}
	if _, err := parseGoBench("PASS\n", "BenchmarkApply"); err == nil {
		t.Error("no result line was not reported")
	}
}
