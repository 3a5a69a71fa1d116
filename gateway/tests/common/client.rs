//! A small Socket.IO v5 / Engine.IO v4 client over WebSocket, enough to test the gateway as a
//! client sees it: connect with auth, emit with acks, receive events, see the server close.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue};

/// Default wait for anything the server should do promptly, generous for a loaded CI machine.
pub const WAIT: Duration = Duration::from_secs(10);

/// How to connect.
#[derive(Debug, Default, Clone)]
pub struct Connect {
    /// Handshake `auth` object.
    pub auth: Option<Value>,
    /// Extra HTTP headers on the upgrade request.
    pub headers: Vec<(&'static str, String)>,
    /// Extra query string (without `?`), e.g. `token=...`.
    pub query: Option<String>,
    /// The socket's receive buffer (SO_RCVBUF), small for a client that is to stall quickly.
    pub recv_buffer: Option<u32>,
}

impl Connect {
    pub fn token(token: &str) -> Self {
        Connect { auth: Some(json!({ "token": token })), ..Default::default() }
    }
}

/// Something the server sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A Socket.IO event and its arguments.
    Event(String, Vec<Value>),
    /// A Socket.IO DISCONNECT packet from the server.
    ServerDisconnect,
    /// The transport closed.
    Closed,
}

/// Why a connection did not complete.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectFailure {
    /// A Socket.IO CONNECT_ERROR with this message.
    Rejected(String),
    /// The HTTP upgrade failed with this status.
    Http(u16),
    /// Anything else.
    Other(String),
}

struct Shared {
    log: Mutex<VecDeque<Incoming>>,
    changed: Notify,
    acks: Mutex<HashMap<u64, oneshot::Sender<Vec<Value>>>>,
}

/// A connected client.
pub struct Client {
    pub sid: String,
    out: mpsc::UnboundedSender<Message>,
    shared: Arc<Shared>,
    next_ack: AtomicU64,
    paused: watch::Sender<bool>,
}

impl Client {
    /// Connects to the gateway at `addr` on the default namespace.
    pub async fn connect(addr: SocketAddr, opts: Connect) -> Result<Client, ConnectFailure> {
        let mut url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        if let Some(q) = &opts.query {
            url.push('&');
            url.push_str(q);
        }
        let mut request = url.into_client_request().map_err(|e| ConnectFailure::Other(e.to_string()))?;
        for (name, value) in &opts.headers {
            request.headers_mut().insert(*name, HeaderValue::from_str(value).unwrap());
        }
        let connecting = async {
            match opts.recv_buffer {
                None => tokio_tungstenite::connect_async(request).await,
                Some(size) => {
                    let socket = tokio::net::TcpSocket::new_v4().map_err(tokio_tungstenite::tungstenite::Error::Io)?;
                    socket.set_recv_buffer_size(size).map_err(tokio_tungstenite::tungstenite::Error::Io)?;
                    let stream = socket.connect(addr).await.map_err(tokio_tungstenite::tungstenite::Error::Io)?;
                    tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream)).await
                }
            }
        };
        let (ws, _) = tokio::time::timeout(WAIT, connecting)
            .await
            .map_err(|_| ConnectFailure::Other("connect timed out".into()))?
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(resp) => ConnectFailure::Http(resp.status().as_u16()),
                e => ConnectFailure::Other(e.to_string()),
            })?;
        let (mut sink, mut stream) = ws.split();

        // Engine.IO open packet.
        let open = next_text(&mut stream).await.ok_or_else(|| ConnectFailure::Other("no open packet".into()))?;
        if !open.starts_with('0') {
            return Err(ConnectFailure::Other(format!("unexpected first packet {open}")));
        }
        let connect = match &opts.auth {
            Some(auth) => format!("40{auth}"),
            None => "40".to_owned(),
        };
        sink.send(Message::text(connect)).await.map_err(|e| ConnectFailure::Other(e.to_string()))?;
        let sid = loop {
            let packet =
                next_text(&mut stream).await.ok_or_else(|| ConnectFailure::Other("closed during connect".into()))?;
            if packet == "2" {
                sink.send(Message::text("3")).await.ok();
                continue;
            }
            if let Some(body) = packet.strip_prefix("40") {
                let v: Value = serde_json::from_str(body).map_err(|e| ConnectFailure::Other(e.to_string()))?;
                break v["sid"].as_str().unwrap_or_default().to_owned();
            }
            if let Some(body) = packet.strip_prefix("44") {
                let v: Value = serde_json::from_str(body).map_err(|e| ConnectFailure::Other(e.to_string()))?;
                return Err(ConnectFailure::Rejected(v["message"].as_str().unwrap_or_default().to_owned()));
            }
            return Err(ConnectFailure::Other(format!("unexpected packet {packet}")));
        };

        let shared = Arc::new(Shared {
            log: Mutex::new(VecDeque::new()),
            changed: Notify::new(),
            acks: Mutex::new(HashMap::new()),
        });
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(msg) = out_rx.recv().await {
                let close = matches!(msg, Message::Close(_));
                if sink.send(msg).await.is_err() || close {
                    break;
                }
            }
        });
        let reader_shared = shared.clone();
        let pong = out.clone();
        let (paused, mut reading) = watch::channel(false);
        tokio::spawn(async move {
            let push = |item: Incoming| {
                reader_shared.log.lock().unwrap().push_back(item);
                reader_shared.changed.notify_waiters();
            };
            loop {
                if reading.wait_for(|paused| !paused).await.is_err() {
                    break;
                }
                let Some(packet) = next_text(&mut stream).await else { break };
                if packet == "2" {
                    let _ = pong.send(Message::text("3"));
                } else if let Some(sio) = packet.strip_prefix('4') {
                    match sio.as_bytes().first() {
                        Some(b'1') => push(Incoming::ServerDisconnect),
                        Some(b'2') => {
                            let (_, body) = split_ack_id(&sio[1..]);
                            if let Ok(Value::Array(mut args)) = serde_json::from_str::<Value>(body)
                                && !args.is_empty()
                            {
                                let name = args.remove(0).as_str().unwrap_or_default().to_owned();
                                push(Incoming::Event(name, args));
                            }
                        }
                        Some(b'3') => {
                            let (id, body) = split_ack_id(&sio[1..]);
                            let args = match serde_json::from_str::<Value>(body) {
                                Ok(Value::Array(args)) => args,
                                _ => Vec::new(),
                            };
                            if let Some(tx) = id.and_then(|id| reader_shared.acks.lock().unwrap().remove(&id)) {
                                let _ = tx.send(args);
                            }
                        }
                        _ => {}
                    }
                }
            }
            // Pending acks can never arrive now: fail them at once instead of at their deadline.
            reader_shared.acks.lock().unwrap().clear();
            push(Incoming::Closed);
        });
        Ok(Client { sid, out, shared, next_ack: AtomicU64::new(1), paused })
    }

    /// Emits `event` with `data` as its only argument, without asking for an ack.
    pub fn emit(&self, event: &str, data: Value) {
        let _ = self.out.send(Message::text(format!("42{}", json!([event, data]))));
    }

    /// Sends a raw Engine.IO text frame (for malformed-input tests).
    pub fn send_raw(&self, frame: &str) {
        let _ = self.out.send(Message::text(frame.to_owned()));
    }

    /// Emits `event` with `data` and waits for the ack's first argument.
    pub async fn request(&self, event: &str, data: Value) -> Value {
        self.try_request(event, data).await.unwrap_or_else(|| panic!("no ack for {event} within {WAIT:?}"))
    }

    /// Like [`Client::request`], `None` if no ack arrives in time.
    pub async fn try_request(&self, event: &str, data: Value) -> Option<Value> {
        let rx = self.send_request(event, data);
        match tokio::time::timeout(WAIT, rx).await {
            Ok(Ok(mut args)) if !args.is_empty() => Some(args.remove(0)),
            _ => None,
        }
    }

    /// Emits with an ack request and returns the pending ack, for pipelining several requests.
    pub fn send_request(&self, event: &str, data: Value) -> oneshot::Receiver<Vec<Value>> {
        let id = self.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.shared.acks.lock().unwrap().insert(id, tx);
        let _ = self.out.send(Message::text(format!("42{id}{}", json!([event, data]))));
        rx
    }

    /// Waits for the next `event` (removing it from the log) and returns its arguments.
    pub async fn next(&self, event: &str) -> Vec<Value> {
        self.next_within(event, WAIT)
            .await
            .unwrap_or_else(|| panic!("no {event:?} within {WAIT:?}; got {:?}", self.log()))
    }

    /// Like [`Client::next`] with an explicit deadline; `None` if it does not come.
    pub async fn next_within(&self, event: &str, within: Duration) -> Option<Vec<Value>> {
        self.wait_for(within, |item| matches!(item, Incoming::Event(name, _) if name == event)).await.map(|item| {
            match item {
                Incoming::Event(_, args) => args,
                _ => unreachable!(),
            }
        })
    }

    /// Waits until the transport is closed.
    pub async fn closed(&self) -> bool {
        self.wait_for(WAIT, |item| *item == Incoming::Closed).await.is_some()
    }

    /// Whether the server sent a Socket.IO DISCONNECT packet so far.
    pub fn got_server_disconnect(&self) -> bool {
        self.log().contains(&Incoming::ServerDisconnect)
    }

    /// Waits for a Socket.IO DISCONNECT packet from the server.
    pub async fn server_disconnect(&self) -> bool {
        self.wait_for(WAIT, |item| *item == Incoming::ServerDisconnect).await.is_some()
    }

    /// Everything received and not yet consumed.
    pub fn log(&self) -> Vec<Incoming> {
        self.shared.log.lock().unwrap().iter().cloned().collect()
    }

    /// Events named `event` received and not yet consumed.
    pub fn events(&self, event: &str) -> Vec<Vec<Value>> {
        self.log()
            .into_iter()
            .filter_map(|i| match i {
                Incoming::Event(name, args) if name == event => Some(args),
                _ => None,
            })
            .collect()
    }

    /// Forgets the events named `event` received so far.
    pub fn clear_events(&self, event: &str) {
        self.shared.log.lock().unwrap().retain(|i| !matches!(i, Incoming::Event(name, _) if name == event));
    }

    async fn wait_for(&self, within: Duration, pred: impl Fn(&Incoming) -> bool) -> Option<Incoming> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut log = self.shared.log.lock().unwrap();
                if let Some(pos) = log.iter().position(&pred) {
                    // Closed stays in the log so later waits see it too.
                    return if log[pos] == Incoming::Closed { Some(Incoming::Closed) } else { log.remove(pos) };
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    /// Stops reading from the connection (after the packet being read, if any), like a client
    /// on a stalled network: nothing is received, pings go unanswered, and once the socket's
    /// receive buffer is full the server cannot write to it.
    pub fn stop_reading(&self) {
        self.paused.send_replace(true);
    }

    /// Reads again after [`Client::stop_reading`].
    pub fn resume_reading(&self) {
        self.paused.send_replace(false);
    }

    /// Sends a Socket.IO DISCONNECT (the client's `socket.disconnect()`), then closes.
    pub fn disconnect(&self) {
        let _ = self.out.send(Message::text("41"));
        let _ = self.out.send(Message::Close(None));
    }

    /// Closes the WebSocket without a Socket.IO DISCONNECT, like a tab being closed.
    pub fn close(&self) {
        let _ = self.out.send(Message::Close(None));
    }
}

fn split_ack_id(s: &str) -> (Option<u64>, &str) {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    (s[..digits].parse().ok(), &s[digits..])
}

async fn next_text<S>(stream: &mut S) -> Option<String>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match stream.next().await? {
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}
