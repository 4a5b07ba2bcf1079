// Baseline: the seed's own stack, a Go gorilla/websocket server shaped like melody, fed by Redis pub/sub
// through redigo, verifying HS256 tokens with golang-jwt.
//
// Melody's shape, kept as melody has it (github.com/olahol/melody, its default Config): one hub goroutine
// owns the session set and fans broadcasts out; each session has a reader (the HTTP handler's goroutine:
// read limit, pong deadline 60 s) and a writer goroutine draining a 256-frame buffered channel, one
// WriteMessage per frame with a 10 s write deadline, a ping every 54 s; a frame for a session whose buffer is
// full is dropped (melody's ErrMessageBufferFull), the session stays open. The upgrader uses melody's
// 1,024-byte read and write buffers. As in melody, a message is one *envelope shared by all its recipients,
// and a session's buffer holds pointers (256 × 8 bytes). Only the read limit differs: 2,048 bytes (wsgw's,
// PROTOCOL.md §2) instead of melody's 512, which a subscribe frame with a token exceeds; /chat allows 16 KiB.
//
// The protocol is the Node baseline's (bench/baselines/node/server.js), exactly:
//   - a subscribe frame's token is verified as HS256 (signature and exp, the secret from WSGW_HMAC_SECRET):
//     `{"@type":"subscribed","user":<name>,"exp":<exp>}`, or an error frame and close 4001;
//   - a JOIN frame puts the client in the one chat room; any other frame is relayed to the room's members;
//   - broadcast mode (default): every Redis message goes to every session as published (melody's Broadcast);
//   - selective mode: subscribed sessions are indexed by the root paths of their token's `workspaces` claim; a
//     node event goes to the sessions of each workspace whose root holds its Target or Source path, the visible
//     nodes' paths rewritten to `<slug>/<rel>`, MetaStore's `pydio:` keys dropped and EventWorkspaceId set,
//     encoded once per workspace.
//
// Built offline from Debian's packages in GOPATH mode (see the Makefile's bench-deps):
//
//	GOPATH=/usr/share/gocode GO111MODULE=off go build -o wsgw-bench-go main.go
//	WSGW_HMAC_SECRET=... ./wsgw-bench-go --port 8003 --redis-port 6379 --channel C [--channel C2] [--mode selective]
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/golang-jwt/jwt"
	"github.com/gomodule/redigo/redis"
	"github.com/gorilla/websocket"
)

// melody's defaults (melody.newConfig), but the read limit.
const (
	writeWait         = 10 * time.Second
	pongWait          = 60 * time.Second
	pingPeriod        = pongWait * 9 / 10
	messageBufferSize = 256
	wsReadLimit       = 2048
	chatReadLimit     = 16384
)

var (
	secret    []byte
	selective bool
	upgrader  = websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: 1024,
		CheckOrigin: func(r *http.Request) bool { return true }}
	dropped uint64
	mu      sync.Mutex // guards dropped's reporting only
)

// -- sessions (melody's Session) -------------------------------------------------------------------------

type envelope struct {
	t   int
	msg []byte
}

type session struct {
	conn   *websocket.Conn
	output chan *envelope
	rw     sync.RWMutex
	open   bool
	views  []*view // selective mode, guarded by the index's lock
}

// writeMessage queues a frame for the writer; a full buffer drops it (melody's ErrMessageBufferFull).
func (s *session) writeMessage(m *envelope) {
	s.rw.RLock()
	defer s.rw.RUnlock()
	if !s.open {
		return
	}
	select {
	case s.output <- m:
	default:
		mu.Lock()
		dropped++
		mu.Unlock()
	}
}

func (s *session) close() {
	s.rw.Lock()
	defer s.rw.Unlock()
	if s.open {
		s.open = false
		s.conn.Close()
		close(s.output)
	}
}

func (s *session) writeRaw(m *envelope) error {
	s.conn.SetWriteDeadline(time.Now().Add(writeWait))
	return s.conn.WriteMessage(m.t, m.msg)
}

func (s *session) writePump() {
	ticker := time.NewTicker(pingPeriod)
	defer ticker.Stop()
	for {
		select {
		case m, ok := <-s.output:
			if !ok {
				return
			}
			err := s.writeRaw(m)
			if err != nil || m.t == websocket.CloseMessage {
				s.close()
				return
			}
		case <-ticker.C:
			if s.writeRaw(&envelope{t: websocket.PingMessage}) != nil {
				s.close()
				return
			}
		}
	}
}

func (s *session) readPump(limit int64, handle func(*session, []byte)) {
	s.conn.SetReadLimit(limit)
	s.conn.SetReadDeadline(time.Now().Add(pongWait))
	s.conn.SetPongHandler(func(string) error {
		s.conn.SetReadDeadline(time.Now().Add(pongWait))
		return nil
	})
	for {
		t, message, err := s.conn.ReadMessage()
		if err != nil {
			return
		}
		if t == websocket.TextMessage || t == websocket.BinaryMessage {
			handle(s, message)
		}
	}
}

// -- the hub (melody's hub: one goroutine owns the session set) ---------------------------------------------

type hub struct {
	sessions   map[*session]bool
	broadcast  chan *envelope
	register   chan *session
	unregister chan *session
}

func (h *hub) run() {
	for {
		select {
		case s := <-h.register:
			h.sessions[s] = true
		case s := <-h.unregister:
			delete(h.sessions, s)
		case m := <-h.broadcast:
			for s := range h.sessions {
				s.writeMessage(m)
			}
		}
	}
}

var theHub = &hub{sessions: map[*session]bool{}, broadcast: make(chan *envelope),
	register: make(chan *session), unregister: make(chan *session)}

// -- the chat room ------------------------------------------------------------------------------------------

var (
	roomMu sync.RWMutex
	room   = map[*session]bool{}
)

// -- tokens ---------------------------------------------------------------------------------------------------

type root struct {
	UUID string `json:"uuid"`
	Path string `json:"path"`
	Key  string `json:"key"`
}

type workspace struct {
	UUID  string `json:"uuid"`
	Slug  string `json:"slug"`
	Roots []root `json:"roots"`
}

type claims struct {
	Name       string      `json:"name"`
	Workspaces []workspace `json:"workspaces"`
	jwt.RegisteredClaims
}

var parser = jwt.NewParser(jwt.WithValidMethods([]string{"HS256"}))

func keyFunc(*jwt.Token) (interface{}, error) { return secret, nil }

type subscribeFrame struct {
	JWT string `json:"jwt"`
}

type subscribedFrame struct {
	Type string `json:"@type"`
	User string `json:"user"`
	Exp  int64  `json:"exp"`
}

type errorFrame struct {
	Type  string `json:"@type"`
	Error string `json:"error"`
}

func subscribe(s *session, data []byte) {
	var frame subscribeFrame
	c := &claims{}
	err := json.Unmarshal(data, &frame)
	if err == nil {
		_, err = parser.ParseWithClaims(frame.JWT, c, keyFunc)
	}
	if err != nil {
		msg, _ := json.Marshal(errorFrame{"error", "invalid token: " + err.Error()})
		s.writeMessage(&envelope{websocket.TextMessage, msg})
		s.writeMessage(&envelope{websocket.CloseMessage, websocket.FormatCloseMessage(4001, "invalid token")})
		return
	}
	if selective {
		index(s, c.Workspaces)
	}
	var exp int64
	if c.ExpiresAt != nil {
		exp = c.ExpiresAt.Unix()
	}
	msg, _ := json.Marshal(subscribedFrame{"subscribed", c.Name, exp})
	s.writeMessage(&envelope{websocket.TextMessage, msg})
}

// -- client frames ------------------------------------------------------------------------------------------

var (
	subscribeHead = []byte(`{"@type":"subscribe"`)
	joinHead      = []byte(`{"@type":"JOIN"`)
)

func handleMessage(s *session, data []byte) {
	head := data
	if len(head) > 24 {
		head = head[:24]
	}
	head = bytes.ReplaceAll(head, []byte(" "), nil)
	switch {
	case bytes.HasPrefix(head, subscribeHead):
		subscribe(s, data)
	case bytes.HasPrefix(head, joinHead):
		roomMu.Lock()
		room[s] = true
		roomMu.Unlock()
	default:
		m := &envelope{websocket.TextMessage, data}
		roomMu.RLock()
		for member := range room {
			member.writeMessage(m)
		}
		roomMu.RUnlock()
	}
}

func serve(limit int64) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		conn, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		s := &session{conn: conn, output: make(chan *envelope, messageBufferSize), open: true}
		theHub.register <- s
		go s.writePump()
		s.readPump(limit, handleMessage)
		theHub.unregister <- s
		roomMu.Lock()
		delete(room, s)
		roomMu.Unlock()
		if selective {
			indexMu.Lock()
			unindexLocked(s)
			indexMu.Unlock()
		}
		s.close()
	}
}

// -- the selective index: root path -> view key -> view ---------------------------------------------------

type view struct {
	key              string
	root             string
	prefix           string
	eventWorkspaceID string
	sessions         map[*session]bool
}

var (
	indexMu sync.RWMutex
	roots   = map[string]map[string]*view{}
)

func unindexLocked(s *session) {
	for _, v := range s.views {
		delete(v.sessions, s)
		if len(v.sessions) == 0 {
			byKey := roots[v.root]
			delete(byKey, v.key)
			if len(byKey) == 0 {
				delete(roots, v.root)
			}
		}
	}
	s.views = nil
}

func index(s *session, workspaces []workspace) {
	indexMu.Lock()
	defer indexMu.Unlock()
	unindexLocked(s)
	for _, w := range workspaces {
		many := len(w.Roots) > 1
		for _, r := range w.Roots {
			key := w.UUID + "\x00" + w.Slug + "\x00" + r.Path
			byKey := roots[r.Path]
			if byKey == nil {
				byKey = map[string]*view{}
				roots[r.Path] = byKey
			}
			v := byKey[key]
			if v == nil {
				prefix := w.Slug
				if many {
					name := r.Key
					if name == "" {
						name = r.Path[strings.LastIndexByte(r.Path, '/')+1:]
					}
					prefix = w.Slug + "/" + name
				}
				id, _ := json.Marshal(w.UUID)
				v = &view{key: key, root: r.Path, prefix: prefix, eventWorkspaceID: string(id),
					sessions: map[*session]bool{}}
				byKey[key] = v
			}
			v.sessions[s] = true
			s.views = append(s.views, v)
		}
	}
}

// -- node events --------------------------------------------------------------------------------------------

type node struct {
	Uuid      string            `json:"Uuid,omitempty"`
	Path      string            `json:"Path,omitempty"`
	Type      string            `json:"Type,omitempty"`
	Size      json.RawMessage   `json:"Size,omitempty"`
	MTime     json.RawMessage   `json:"MTime,omitempty"`
	Mode      json.RawMessage   `json:"Mode,omitempty"`
	Etag      string            `json:"Etag,omitempty"`
	MetaStore map[string]string `json:"MetaStore,omitempty"`
}

type nodeEvent struct {
	Type   string `json:"Type,omitempty"`
	Target *node  `json:"Target,omitempty"`
	Source *node  `json:"Source,omitempty"`
}

// viewsOf adds the views whose root holds path: the path itself and each of its ancestors.
func viewsOf(path string, found map[*view]bool) {
	for end := len(path); end > 0; end = strings.LastIndexByte(path[:end], '/') {
		for _, v := range roots[path[:end]] {
			found[v] = true
		}
	}
}

func visibleIn(n *node, v *view) bool {
	if n == nil || n.Path == "" {
		return false
	}
	if strings.HasPrefix(n.Path[strings.LastIndexByte(n.Path, '/')+1:], ".") {
		return false
	}
	return n.Path == v.root || (strings.HasPrefix(n.Path, v.root) && n.Path[len(v.root)] == '/')
}

func shape(n *node, v *view) *node {
	out := *n
	out.Path = v.prefix + n.Path[len(v.root):]
	out.MetaStore = make(map[string]string, len(n.MetaStore)+1)
	for k, val := range n.MetaStore {
		if !strings.HasPrefix(k, "pydio:") {
			out.MetaStore[k] = val
		}
	}
	out.MetaStore["EventWorkspaceId"] = v.eventWorkspaceID
	return &out
}

func deliverSelective(data []byte) {
	var ev nodeEvent
	if json.Unmarshal(data, &ev) != nil || ev.Type == "READ" {
		return
	}
	indexMu.RLock()
	defer indexMu.RUnlock()
	views := map[*view]bool{}
	if ev.Target != nil {
		viewsOf(ev.Target.Path, views)
	}
	if ev.Source != nil {
		viewsOf(ev.Source.Path, views)
	}
	for v := range views {
		tv, sv := visibleIn(ev.Target, v), visibleIn(ev.Source, v)
		if !tv && !sv {
			continue
		}
		typ := ev.Type
		if typ == "" {
			typ = "CREATE"
		}
		if typ == "UPDATE_PATH" && tv != sv {
			if tv {
				typ = "CREATE"
			} else {
				typ = "DELETE"
			}
		}
		var out nodeEvent
		if typ != "CREATE" {
			out.Type = typ
		}
		if tv {
			out.Target = shape(ev.Target, v)
		}
		if sv {
			out.Source = shape(ev.Source, v)
		}
		msg, err := json.Marshal(out)
		if err != nil {
			continue
		}
		m := &envelope{websocket.TextMessage, msg}
		for s := range v.sessions {
			s.writeMessage(m)
		}
	}
}

// -- Redis ------------------------------------------------------------------------------------------------

type channels []string

func (c *channels) String() string     { return strings.Join(*c, ",") }
func (c *channels) Set(v string) error { *c = append(*c, v); return nil }

func listenRedis(port int, chans channels) {
	conn, err := redis.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		log.Fatalf("redis: %v", err)
	}
	psc := redis.PubSubConn{Conn: conn}
	args := make([]interface{}, len(chans))
	for i, c := range chans {
		args[i] = c
	}
	if err := psc.Subscribe(args...); err != nil {
		log.Fatalf("redis subscribe: %v", err)
	}
	for {
		switch v := psc.Receive().(type) {
		case redis.Message:
			if selective {
				deliverSelective(v.Data)
			} else {
				theHub.broadcast <- &envelope{websocket.TextMessage, v.Data}
			}
		case redis.Subscription:
			if v.Count == len(chans) {
				fmt.Println("subscribed")
			}
		case error:
			log.Fatalf("redis: %v", v)
		}
	}
}

func main() {
	port := flag.Int("port", 0, "listen port (127.0.0.1)")
	redisPort := flag.Int("redis-port", 6379, "Redis port (127.0.0.1)")
	mode := flag.String("mode", "broadcast", "broadcast or selective")
	var chans channels
	flag.Var(&chans, "channel", "Redis channel (repeat)")
	flag.Parse()
	secret = []byte(os.Getenv("WSGW_HMAC_SECRET"))
	if len(secret) == 0 || *port == 0 || len(chans) == 0 {
		log.Fatal("usage: WSGW_HMAC_SECRET=... wsgw-bench-go --port P --redis-port R --channel C [--mode selective]")
	}
	switch *mode {
	case "broadcast":
	case "selective":
		selective = true
	default:
		log.Fatalf("unknown mode %q", *mode)
	}
	go theHub.run()
	go listenRedis(*redisPort, chans)
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", serve(wsReadLimit))
	mux.HandleFunc("/chat", serve(chatReadLimit))
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(*port)))
	if err != nil {
		log.Fatal(err)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		mu.Lock()
		log.Printf("frames dropped (buffer full): %d", dropped)
		mu.Unlock()
		os.Exit(0)
	}()
	err = http.Serve(ln, mux)
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}
