package resume

import (
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// TestSSHSurvivesCuts runs a real SSH connection (x/crypto/ssh on both
// ends) over a resumable session and cuts its path twice while a channel
// echoes data: the SSH connection never notices.
func TestSSHSurvivesCuts(t *testing.T) {
	checkLeaks(t)
	node := newTestNode(t, ServerConfig{})
	relay := newRelay(t, node.addr(), nil, "")

	_, hostKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(hostKey)
	if err != nil {
		t.Fatal(err)
	}
	serverConfig := &ssh.ServerConfig{NoClientAuth: true}
	serverConfig.AddHostKey(signer)

	// The node: an SSH server whose "echo" channels send back what they
	// get.
	serverDone := make(chan error, 1)
	go func() {
		sc := node.acceptSession(t)
		conn, chans, reqs, err := ssh.NewServerConn(sc, serverConfig)
		if err != nil {
			serverDone <- err
			return
		}
		defer conn.Close()
		go ssh.DiscardRequests(reqs)
		for nc := range chans {
			if nc.ChannelType() != "echo" {
				nc.Reject(ssh.UnknownChannelType, "only echo")
				continue
			}
			ch, creqs, err := nc.Accept()
			if err != nil {
				serverDone <- err
				return
			}
			go ssh.DiscardRequests(creqs)
			go func() {
				io.Copy(ch, ch)
				ch.CloseWrite()
			}()
		}
		serverDone <- conn.Wait()
	}()

	resumes := make(chan ResumeInfo, 4)
	c, err := Dial(t.Context(), ClientConfig{
		Dial:     dialTo(always(relay.addr())),
		OnResume: func(i ResumeInfo) { resumes <- i },
		Logger:   testLogger(t).With("side", "client"),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sshConn, chans, reqs, err := ssh.NewClientConn(c, "node", &ssh.ClientConfig{
		User:            "test",
		HostKeyCallback: ssh.FixedHostKey(signer.PublicKey()),
		Timeout:         10 * time.Second,
	})
	if err != nil {
		t.Fatalf("SSH handshake over the resumable session: %v", err)
	}
	client := ssh.NewClient(sshConn, chans, reqs)
	defer client.Close()
	ch, creqs, err := client.OpenChannel("echo", nil)
	if err != nil {
		t.Fatal(err)
	}
	go ssh.DiscardRequests(creqs)

	const size = 8 << 20
	var echoed atomic.Int64
	errs := make(chan error, 2)
	go func() {
		err := sendPattern(ch, 7, size, nil)
		if err == nil {
			err = ch.CloseWrite()
		}
		errs <- err
	}()
	go func() { errs <- checkPattern(ch, 7, size, true, &echoed) }()

	for i, at := range []int64{size / 4, size / 2} {
		waitFor(t, 30*time.Second, "the echo to progress", func() bool { return echoed.Load() >= at })
		if n := relay.cut(); n != 1 {
			t.Fatalf("cut %d: %d connections in the relay, want 1", i, n)
		}
		cutAt := echoed.Load()
		info := waitResume(t, resumes)
		t.Logf("cut %d at %d of %d bytes echoed: resumed after %v", i, cutAt, size, info.Stall)
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	client.Close()
	select {
	case err := <-serverDone:
		if err != nil && err != io.EOF {
			t.Logf("SSH server ended: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the SSH server did not see the connection end")
	}
}
