// go-smtp sink for the benchmark (built and started by ../run.py --with-go; taken from
// the organisation's shared bench harness, servers/impl/go_smtp_sink.go).
//
// Usage: go-smtp-sink PORT
//
// emersion/go-smtp's Server (written against 0.12.1, the Debian package) with
// a Backend whose anonymous Session accepts every sender, recipient and
// message. Data reads the whole body (the library's textproto DotReader:
// dot-unstuffed, CRLF turned into LF) and counts it; the count adds one byte
// per LF for the CR the reader removed, so it matches the other adapters'
// CRLF counts (the warm-up message is 100 bytes everywhere).
//
// Settings, all as shipped unless the bench contract says otherwise:
// AuthDisabled (AUTH neither advertised nor accepted; anonymous sessions via
// AnonymousLogin, so no AUTH requirement) with AllowInsecureAuth set too (it
// is overridden by AuthDisabled in 0.12.1); no TLSConfig, so no STARTTLS;
// MaxMessageBytes 0 (no SIZE, no limit); MaxRecipients 0 (no limit);
// Read/WriteTimeout 0 (the library default: none); MaxLineLength left at its
// default 2000; Debug nil; ErrorLog (panics only) to stderr; Domain fixed to
// "localhost"; no reverse lookups (the library does none). The listening
// socket is made by hand so its backlog is 511 like the other adapters' (Go's
// net.Listen always uses net.core.somaxconn). GOMAXPROCS and GOGC are left at
// their defaults (the startup line prints them).
//
// On SIGTERM/SIGINT prints "BENCH messages=N bytes=B" and exits.
package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/emersion/go-smtp"
)

// Set by the wrapper with -ldflags "-X main.goSMTPVersion=…" (GOPATH builds
// carry no module version).
var goSMTPVersion = "unknown"

var (
	messages   int64
	totalBytes int64
)

var bufPool = sync.Pool{New: func() interface{} { b := make([]byte, 32*1024); return &b }}

type backend struct{}

func (backend) Login(state *smtp.ConnectionState, username, password string) (smtp.Session, error) {
	return nil, smtp.ErrAuthUnsupported
}

func (backend) AnonymousLogin(state *smtp.ConnectionState) (smtp.Session, error) {
	return session{}, nil
}

type session struct{}

func (session) Reset()                                        {}
func (session) Logout() error                                 { return nil }
func (session) Mail(from string, opts smtp.MailOptions) error { return nil }
func (session) Rcpt(to string) error                          { return nil }

func (session) Data(r io.Reader) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var n int64
	for {
		k, err := r.Read(buf)
		if k > 0 {
			n += int64(k) + int64(bytes.Count(buf[:k], []byte{'\n'}))
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	atomic.AddInt64(&messages, 1)
	atomic.AddInt64(&totalBytes, n)
	return nil
}

// listen511 opens 127.0.0.1:port with SO_REUSEADDR and listen(fd, 511).
func listen511(port int) (net.Listener, error) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "listener")
	defer f.Close() // net.FileListener dups the descriptor
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); err != nil {
		return nil, err
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return nil, err
	}
	if err := syscall.Listen(fd, 511); err != nil {
		return nil, err
	}
	return net.FileListener(f)
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: go-smtp-sink PORT")
		os.Exit(2)
	}
	port, err := strconv.Atoi(os.Args[1])
	if err != nil || port <= 0 || port > 65535 {
		fmt.Fprintln(os.Stderr, "go-smtp-sink: bad port", os.Args[1])
		os.Exit(2)
	}

	s := smtp.NewServer(backend{})
	s.Domain = "localhost"
	s.AuthDisabled = true
	s.AllowInsecureAuth = true
	s.MaxMessageBytes = 0
	s.MaxRecipients = 0

	l, err := listen511(port)
	if err != nil {
		fmt.Fprintln(os.Stderr, "go-smtp-sink: listen:", err)
		os.Exit(1)
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		fmt.Printf("BENCH messages=%d bytes=%d\n", atomic.LoadInt64(&messages), atomic.LoadInt64(&totalBytes))
		os.Exit(0) // like the other adapters: no drain of open sessions
	}()

	gogc := os.Getenv("GOGC")
	if gogc == "" {
		gogc = "default"
	}
	fmt.Printf("bench-adapter go-smtp %s %s GOMAXPROCS=%d GOGC=%s port=%d\n",
		goSMTPVersion, runtime.Version(), runtime.GOMAXPROCS(0), gogc, port)

	if err := s.Serve(l); err != nil && !errors.Is(err, net.ErrClosed) {
		fmt.Fprintln(os.Stderr, "go-smtp-sink: serve:", err)
		os.Exit(1)
	}
}
