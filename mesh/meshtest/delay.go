package meshtest

import (
	"container/heap"
	"sync"
	"time"
)

// delayLine sends datagrams once their delay has passed, from one
// goroutine, and holds at most limit of them; past that it drops them (a
// full router queue). A destination's delay is fixed (the WAN's RTTs do
// not change), so sending in order of due time keeps each destination's
// datagrams in the order they were pushed.
type delayLine[A any] struct {
	send  func(b []byte, to A)
	limit int
	count *counter

	wake chan struct{} // cap 1: the queue or closed changed
	done chan struct{} // closed when run returns

	mu     sync.Mutex // guards following
	q      packetHeap[A]
	seq    uint64
	closed bool
}

type packet[A any] struct {
	due time.Time
	seq uint64 // push order, for datagrams due at the same instant
	b   []byte
	to  A
}

// newDelayLine starts a delay line that calls send for each datagram
// when due. send is called from the line's goroutine only.
func newDelayLine[A any](limit int, c *counter, send func([]byte, A)) *delayLine[A] {
	d := &delayLine[A]{send: send, limit: limit, count: c, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go d.run()
	return d
}

// push queues a copy of b for to, due after delay. It reports false when
// the datagram was dropped (queue full) or the line is closed.
func (d *delayLine[A]) push(b []byte, to A, delay time.Duration) bool {
	p := packet[A]{due: time.Now().Add(delay), b: append([]byte(nil), b...), to: to}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return false
	}
	if d.q.Len() >= d.limit {
		d.mu.Unlock()
		d.count.drop()
		return false
	}
	d.seq++
	p.seq = d.seq
	heap.Push(&d.q, p)
	first := d.q[0].seq == p.seq
	d.mu.Unlock()
	if first {
		d.poke()
	}
	return true
}

func (d *delayLine[A]) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// close drops the datagrams still in flight (the socket is gone) and
// waits for the line's goroutine. It is safe to call more than once.
func (d *delayLine[A]) close() {
	d.mu.Lock()
	d.closed = true
	d.q = nil
	d.mu.Unlock()
	d.poke()
	<-d.done
}

// run owns the timer and sends what is due.
func (d *delayLine[A]) run() {
	defer close(d.done)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var due []packet[A]
	for {
		d.mu.Lock()
		if d.closed {
			d.mu.Unlock()
			return
		}
		now := time.Now()
		due = due[:0]
		for d.q.Len() > 0 && !d.q[0].due.After(now) {
			due = append(due, heap.Pop(&d.q).(packet[A]))
		}
		wait := time.Duration(-1)
		if len(due) == 0 && d.q.Len() > 0 {
			wait = d.q[0].due.Sub(now)
		}
		d.mu.Unlock()
		if len(due) > 0 {
			for i := range due {
				d.send(due[i].b, due[i].to)
				due[i] = packet[A]{}
			}
			continue
		}
		if wait >= 0 {
			timer.Reset(wait)
		}
		select {
		case <-d.wake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// packetHeap orders datagrams by due time, then push order.
type packetHeap[A any] []packet[A]

func (h packetHeap[A]) Len() int { return len(h) }
func (h packetHeap[A]) Less(i, j int) bool {
	if !h[i].due.Equal(h[j].due) {
		return h[i].due.Before(h[j].due)
	}
	return h[i].seq < h[j].seq
}
func (h packetHeap[A]) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *packetHeap[A]) Push(x any)   { *h = append(*h, x.(packet[A])) }
func (h *packetHeap[A]) Pop() any {
	old := *h
	p := old[len(old)-1]
	old[len(old)-1] = packet[A]{}
	*h = old[:len(old)-1]
	return p
}
