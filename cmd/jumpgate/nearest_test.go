package main

import (
	"context"
	"net"
	"testing"
	"time"
)

func TestNearestFirst(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	// A port nobody listens on: refused at once, so it must still sort
	// after the live one however fast the refusal.
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close()
	got := nearestFirst(context.Background(), []string{deadAddr, l.Addr().String()}, 500*time.Millisecond)
	if got[0] != l.Addr().String() || got[1] != deadAddr {
		t.Fatalf("order: %v", got)
	}
}
