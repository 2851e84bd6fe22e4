package sshd

import (
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"github.com/creack/pty"
)

// openPTY opens a terminal pair of the given size. The master it returns is
// non-blocking and registered with Go's poller, unlike the one pty.Open
// returns (its ioctls call Fd, which makes the file blocking): Close and
// read deadlines must interrupt a pending Read, or a background job holding
// the terminal would pin the session's reader forever.
func openPTY(size winsize) (ptmx, tty *os.File, err error) {
	p, t, err := pty.Open()
	if err != nil {
		return nil, nil, fmt.Errorf("open pty: %w", err)
	}
	defer p.Close() // the duplicate below stays open
	if err := setWinsize(t, size); err != nil {
		t.Close()
		return nil, nil, fmt.Errorf("set pty size: %w", err)
	}
	m, err := nonblockingDup(p)
	if err != nil {
		t.Close()
		return nil, nil, fmt.Errorf("open pty: %w", err)
	}
	return m, t, nil
}

// nonblockingDup returns a non-blocking, close-on-exec duplicate of f.
func nonblockingDup(f *os.File) (*os.File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd := -1
	var dupErr error
	err = rc.Control(func(orig uintptr) {
		// ForkLock keeps a concurrent fork from inheriting the descriptor
		// before it is marked close-on-exec, as the os package does.
		syscall.ForkLock.RLock()
		defer syscall.ForkLock.RUnlock()
		fd, dupErr = syscall.Dup(int(orig))
		if dupErr == nil {
			syscall.CloseOnExec(fd)
		}
	})
	if err == nil {
		err = dupErr
	}
	if err != nil {
		return nil, fmt.Errorf("dup: %w", err)
	}
	if err := syscall.SetNonblock(fd, true); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("set non-blocking: %w", err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// setWinsize sets a terminal's size without calling f.Fd (see openPTY).
func setWinsize(f *os.File, size winsize) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	ws := pty.Winsize{Rows: size.Rows, Cols: size.Cols}
	var errno syscall.Errno
	err = rc.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, uintptr(syscall.TIOCSWINSZ), uintptr(unsafe.Pointer(&ws)))
	})
	if err != nil {
		return err
	}
	if errno != 0 {
		return errno
	}
	return nil
}
