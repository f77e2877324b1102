package handoff

import (
	"bytes"
	"errors"
	"fmt"
)

// MaxFiles is the most sockets one handoff carries. The kernel allows 253 fds in one
// message (SCM_MAX_FD); 64 is far more than an app listens on and keeps buffers small.
const MaxFiles = 64

// The wire format. Every message is one SOCK_SEQPACKET packet, so message boundaries are
// the kernel's and the fds always arrive with the packet that names them:
//
//	magic "sact" | version | kind | body
//
// kind 'H' (shim -> sact): hello, empty body.
// kind 'F' (sact -> shim): count byte, then count times (name length byte, name), with
// SCM_RIGHTS carrying exactly count fds in the same packet.
// kind 'S' (sact -> shim): as 'F', for the next incarnation of a running app during a
// deploy: the sockets are in use by the running one, whose mode (O_NONBLOCK, one flag
// for every holder) the shim leaves as it is.
// kind 'A' (shim -> sact): the fds arrived; empty body.
// kind 'E' (either way): UTF-8 text saying what went wrong and how to fix it. An error
// packet is understood whatever its version, so that two sact versions can still tell
// each other that they differ.
const (
	magic        = "sact"
	protoVersion = 1

	kindHello  = 'H'
	kindFiles  = 'F'
	kindShared = 'S'
	kindAck    = 'A'
	kindError  = 'E'

	headerLen = len(magic) + 2

	// maxNameLen is systemd's limit for a name in LISTEN_FDNAMES (FDNAME_MAX).
	maxNameLen = 255

	// maxPacket bounds every message: the files message with MaxFiles longest names.
	maxPacket = headerLen + 1 + MaxFiles*(1+maxNameLen)

	// maxErrorText bounds the text of an error message.
	maxErrorText = 1024
)

// errNotSact means the peer does not speak this protocol at all.
var errNotSact = errors.New("the peer is not sact's handoff protocol")

// versionError means the peer speaks another version of the protocol.
type versionError struct{ got byte }

func (e versionError) Error() string {
	return fmt.Sprintf("the peer speaks handoff protocol version %d, this sact speaks version %d", e.got, protoVersion)
}

// peerError carries the text of an error message the peer sent.
type peerError struct{ text string }

func (e peerError) Error() string { return e.text }

func encode(kind byte, body []byte) []byte {
	b := make([]byte, 0, headerLen+len(body))
	b = append(b, magic...)
	b = append(b, protoVersion, kind)
	return append(b, body...)
}

func encodeError(text string) []byte {
	if len(text) > maxErrorText {
		text = text[:maxErrorText]
	}
	return encode(kindError, []byte(text))
}

// decode checks the header of packet b and returns its kind and body. An error message
// comes back as a peerError whatever its version.
func decode(b []byte) (kind byte, body []byte, err error) {
	if len(b) < headerLen || !bytes.Equal(b[:len(magic)], []byte(magic)) {
		return 0, nil, errNotSact
	}
	version, kind, body := b[len(magic)], b[len(magic)+1], b[headerLen:]
	if kind == kindError {
		return 0, nil, peerError{string(body)}
	}
	if version != protoVersion {
		return 0, nil, versionError{version}
	}
	return kind, body, nil
}

func encodeNames(names []string) []byte {
	b := []byte{byte(len(names))}
	for _, n := range names {
		b = append(b, byte(len(n)))
		b = append(b, n...)
	}
	return b
}

func decodeNames(body []byte) ([]string, error) {
	if len(body) < 1 {
		return nil, errors.New("files message has no count")
	}
	count := int(body[0])
	if count > MaxFiles {
		return nil, fmt.Errorf("files message announces %d sockets, at most %d are allowed", count, MaxFiles)
	}
	body = body[1:]
	names := make([]string, 0, count)
	for range count {
		if len(body) < 1 || len(body) < 1+int(body[0]) {
			return nil, errors.New("files message is cut short")
		}
		n := int(body[0])
		name := string(body[1 : 1+n])
		if err := checkName(name); err != nil {
			return nil, err
		}
		names = append(names, name)
		body = body[1+n:]
	}
	if len(body) != 0 {
		return nil, fmt.Errorf("files message has %d bytes after the names", len(body))
	}
	return names, nil
}

// checkName applies systemd's rules for LISTEN_FDNAMES entries (fdname_is_valid):
// 1 to 255 bytes of printable ASCII, no ':' (the separator).
func checkName(name string) error {
	if name == "" {
		return errors.New("socket name is empty; give every socket a name, like \"http\"")
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("socket name %.20q... is %d bytes, at most %d are allowed", name, len(name), maxNameLen)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || c > 0x7e || c == ':' {
			return fmt.Errorf("socket name %q has %q; use printable ASCII without ':'", name, c)
		}
	}
	return nil
}
