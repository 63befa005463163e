// An ECH server that mtt did not write, for mtt's test suite: Go's crypto/tls (Go 1.24 or
// later, standard library only) with an ECH key made at start. It prints its ECHConfigList
// as base64 ("ech CONFIG"), and one made with another key that it cannot open ("stale
// CONFIG"); then, per connection, "hello sni=NAME ech=true|false" (the name the handshake
// ended with, and whether ECH was accepted), and echoes the connection's bytes.
//
//	ech_peer -b 127.0.0.1:0 -cert F -key F -public-name NAME [-no-retry]
//
// -no-retry: a rejected ECH gets no retry configurations.
package main

import (
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
)

// echConfig encodes one ECHConfig (draft-ietf-tls-esni, version 0xfe0d): DHKEM(X25519,
// HKDF-SHA256), HKDF-SHA256 with AES-128-GCM, the public name, no extensions.
func echConfig(id byte, pub []byte, publicName string) []byte {
	var c []byte
	c = append(c, id)
	c = binary.BigEndian.AppendUint16(c, 0x0020) // DHKEM(X25519, HKDF-SHA256)
	c = binary.BigEndian.AppendUint16(c, uint16(len(pub)))
	c = append(c, pub...)
	c = binary.BigEndian.AppendUint16(c, 4)      // one cipher suite
	c = binary.BigEndian.AppendUint16(c, 0x0001) // HKDF-SHA256
	c = binary.BigEndian.AppendUint16(c, 0x0001) // AES-128-GCM
	c = append(c, 0)                             // maximum_name_length
	c = append(c, byte(len(publicName)))
	c = append(c, publicName...)
	c = binary.BigEndian.AppendUint16(c, 0) // no extensions
	out := binary.BigEndian.AppendUint16(nil, 0xfe0d)
	out = binary.BigEndian.AppendUint16(out, uint16(len(c)))
	return append(out, c...)
}

func list(config []byte) string {
	l := binary.BigEndian.AppendUint16(nil, uint16(len(config)))
	return base64.StdEncoding.EncodeToString(append(l, config...))
}

func main() {
	bind := flag.String("b", "127.0.0.1:0", "listen address")
	cert := flag.String("cert", "", "certificate PEM")
	key := flag.String("key", "", "key PEM")
	publicName := flag.String("public-name", "public.example", "ECH public name")
	noRetry := flag.Bool("no-retry", false, "send no retry configurations")
	flag.Parse()
	pair, err := tls.LoadX509KeyPair(*cert, *key)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	priv, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	other, _ := ecdh.X25519().GenerateKey(rand.Reader)
	config := echConfig(1, priv.PublicKey().Bytes(), *publicName)
	stale := echConfig(1, other.PublicKey().Bytes(), *publicName)
	tc := &tls.Config{
		Certificates: []tls.Certificate{pair},
		MinVersion:   tls.VersionTLS13,
		EncryptedClientHelloKeys: []tls.EncryptedClientHelloKey{{
			Config: config, PrivateKey: priv.Bytes(), SendAsRetry: !*noRetry,
		}},
	}
	l, err := tls.Listen("tcp", *bind, tc)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("ech %s\nstale %s\nlistening on %s\n", list(config), list(stale), l.Addr())
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func(c net.Conn) {
			defer c.Close()
			t := c.(*tls.Conn)
			if err := t.Handshake(); err != nil {
				fmt.Printf("handshake failed: %v\n", err)
				return
			}
			s := t.ConnectionState()
			fmt.Printf("hello sni=%s ech=%v\n", s.ServerName, s.ECHAccepted)
			io.Copy(c, c)
		}(c)
	}
}
