// A test peer that multiplexes as mos-tls-tunnel does: smux protocol version 1 (xtaci/smux),
// 16 KiB frames, 256 KiB receive buffer, keepalive 30 s / 70 s, over TLS or over WebSocket
// (gorilla/websocket, subprotocol smux_on). Test code for mtt's test suite only.
//
//	smux_peer client -b 127.0.0.1:0 -s HOST:PORT [-wss PATH] [-max-streams N]
//	smux_peer server -b 127.0.0.1:0 -d HOST:PORT -cert F -key F [-wss PATH]
//
// Each prints "listening on ADDR" once it accepts connections.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/xtaci/smux"
)

func config() *smux.Config {
	c := smux.DefaultConfig()
	c.Version = 1
	c.KeepAliveInterval = 30 * time.Second
	c.KeepAliveTimeout = 70 * time.Second
	c.MaxFrameSize = 16384
	c.MaxReceiveBuffer = 262144
	c.MaxStreamBuffer = 65536
	return c
}

// wsConn is a WebSocket connection as a byte stream: binary messages, read across their
// boundaries.
type wsConn struct {
	c *websocket.Conn
	r io.Reader
	w sync.Mutex
}

func (w *wsConn) Read(b []byte) (int, error) {
	for {
		if w.r == nil {
			_, r, err := w.c.NextReader()
			if err != nil {
				return 0, io.EOF
			}
			w.r = r
		}
		n, err := w.r.Read(b)
		if err == io.EOF {
			w.r = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

func (w *wsConn) Write(b []byte) (int, error) {
	w.w.Lock()
	defer w.w.Unlock()
	if err := w.c.WriteMessage(websocket.BinaryMessage, b); err != nil {
		return 0, err
	}
	return len(b), nil
}

func (w *wsConn) Close() error {
	w.w.Lock()
	_ = w.c.WriteControl(websocket.CloseMessage,
		websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	w.w.Unlock()
	return w.c.Close()
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "smux_peer: "+format+"\n", args...)
	os.Exit(2)
}

func listen(addr string) net.Listener {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fail("listen %s: %v", addr, err)
	}
	fmt.Fprintf(os.Stderr, "listening on %s\n", l.Addr())
	return l
}

type closeWriter interface{ CloseWrite() error }

// relay copies one way: from an smux stream to a connection, then ends the
// connection's writing; the other way, from the connection to the stream, then closes the
// stream (smux version 1 has no half-close of its own).
func relay(stream *smux.Stream, conn net.Conn) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(conn, stream)
		if cw, ok := conn.(closeWriter); ok {
			_ = cw.CloseWrite()
		}
	}()
	go func() {
		defer wg.Done()
		_, _ = io.Copy(stream, conn)
		_ = stream.Close()
	}()
	wg.Wait()
	_ = conn.Close()
}

func dialSession(server, path string) (*smux.Session, error) {
	tc := &tls.Config{InsecureSkipVerify: true, ServerName: "127.0.0.1"}
	var conn io.ReadWriteCloser
	if path == "" {
		c, err := tls.Dial("tcp", server, tc)
		if err != nil {
			return nil, err
		}
		conn = c
	} else {
		d := websocket.Dialer{TLSClientConfig: tc, Subprotocols: []string{"smux_on"},
			HandshakeTimeout: 10 * time.Second}
		c, _, err := d.Dial("wss://"+server+path, nil)
		if err != nil {
			return nil, err
		}
		conn = &wsConn{c: c}
	}
	return smux.Client(conn, config())
}

func client(args []string) {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	bind := fs.String("b", "127.0.0.1:0", "listen")
	server := fs.String("s", "", "server")
	path := fs.String("wss", "", "WebSocket path (none: plain TLS)")
	max := fs.Int("max-streams", 16, "streams per session")
	_ = fs.Parse(args)
	l := listen(*bind)
	var mu sync.Mutex
	var sessions []*smux.Session
	open := func() (*smux.Stream, error) {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range sessions {
			if !s.IsClosed() && s.NumStreams() < *max {
				if st, err := s.OpenStream(); err == nil {
					return st, nil
				}
			}
		}
		s, err := dialSession(*server, *path)
		if err != nil {
			return nil, err
		}
		sessions = append(sessions, s)
		return s.OpenStream()
	}
	for {
		c, err := l.Accept()
		if err != nil {
			fail("accept: %v", err)
		}
		go func(c net.Conn) {
			st, err := open()
			if err != nil {
				fmt.Fprintf(os.Stderr, "open stream: %v\n", err)
				_ = c.Close()
				return
			}
			relayClient(st, c)
		}(c)
	}
}

// relayClient: what the application sends goes into the stream until it closes, which closes
// the stream; what comes back goes to the application until the stream ends.
func relayClient(stream *smux.Stream, conn net.Conn) {
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(conn, stream)
		if cw, ok := conn.(closeWriter); ok {
			_ = cw.CloseWrite()
		}
		close(done)
	}()
	_, _ = io.Copy(stream, conn)
	<-done
	_ = stream.Close()
	_ = conn.Close()
}

func serveSession(conn io.ReadWriteCloser, dest string) {
	s, err := smux.Server(conn, config())
	if err != nil {
		fail("session: %v", err)
	}
	for {
		st, err := s.AcceptStream()
		if err != nil {
			return
		}
		go func(st *smux.Stream) {
			d, err := net.Dial("tcp", dest)
			if err != nil {
				_ = st.Close()
				return
			}
			relay(st, d)
		}(st)
	}
}

func server(args []string) {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	bind := fs.String("b", "127.0.0.1:0", "listen")
	dest := fs.String("d", "", "destination")
	cert := fs.String("cert", "", "certificate")
	key := fs.String("key", "", "key")
	path := fs.String("wss", "", "WebSocket path (none: plain TLS)")
	_ = fs.Parse(args)
	pair, err := tls.LoadX509KeyPair(*cert, *key)
	if err != nil {
		fail("certificate: %v", err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{pair}}
	l := tls.NewListener(listen(*bind), tc)
	if *path == "" {
		for {
			c, err := l.Accept()
			if err != nil {
				fail("accept: %v", err)
			}
			go serveSession(c, *dest)
		}
	}
	up := websocket.Upgrader{Subprotocols: []string{"smux_on"}}
	mux := http.NewServeMux()
	mux.HandleFunc(*path, func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		serveSession(&wsConn{c: c}, *dest)
	})
	_ = http.Serve(l, mux)
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: smux_peer client|server …")
	}
	switch os.Args[1] {
	case "client":
		client(os.Args[2:])
	case "server":
		server(os.Args[2:])
	default:
		fail("unknown role %s", os.Args[1])
	}
}
