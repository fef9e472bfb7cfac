//! A real HTTP/1.1 server on a loopback address, for the `http` tests: it records every request
//! (method, path, headers, body) and answers by a route function. It also counts raw TCP
//! connections, so a test can prove that nothing reached it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Header fields, names lowercase.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Recorded {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How to answer.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Status, extra headers, body (sent with `Content-Length`).
    Reply(u16, Vec<(String, String)>, Vec<u8>),
    /// Like `Reply`, without `Content-Length`: the body ends when the connection closes.
    Unframed(u16, Vec<u8>),
    /// Never answer; hold the connection until the client goes away.
    Hang,
}

impl Answer {
    /// 200 with a text body.
    pub fn ok(body: &str) -> Self {
        Self::Reply(200, Vec::new(), body.as_bytes().to_vec())
    }

    /// A redirect to `location`.
    pub fn redirect(status: u16, location: &str) -> Self {
        Self::Reply(
            status,
            vec![("Location".into(), location.into())],
            Vec::new(),
        )
    }
}

type Route = dyn Fn(&Recorded) -> Answer + Send + Sync;

/// A running server. It lives until the test process ends.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Recorded>>>,
    received: Mutex<mpsc::Receiver<Recorded>>,
}

impl Server {
    /// Starts a server on `ip` (e.g. `127.0.0.2`), port chosen by the kernel.
    pub fn start(ip: &str, route: impl Fn(&Recorded) -> Answer + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind((ip, 0))
            .unwrap_or_else(|e| panic!("binding a test server on {ip}: {e}"));
        let addr = listener.local_addr().expect("the listener has an address");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let route: Arc<Route> = Arc::new(route);
        let (c, r) = (connections.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let (route, r, tx) = (route.clone(), r.clone(), tx.clone());
                std::thread::spawn(move || serve(stream, &*route, &r, &tx));
            }
        });
        Self {
            addr,
            connections,
            requests,
            received: Mutex::new(rx),
        }
    }

    /// A URL on this server.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("the request log").clone()
    }

    /// Waits (up to 5 s) for the next request.
    pub fn next_request(&self) -> Recorded {
        self.received
            .lock()
            .expect("the receiver")
            .recv_timeout(Duration::from_secs(5))
            .expect("the server received no request within 5 s")
    }
}

fn serve(
    stream: TcpStream,
    route: &Route,
    log: &Mutex<Vec<Recorded>>,
    tx: &mpsc::Sender<Recorded>,
) {
    let mut reader = BufReader::new(stream.try_clone().expect("cloning a TCP stream"));
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let req = Recorded {
        method,
        path,
        headers,
        body,
    };
    log.lock().expect("the request log").push(req.clone());
    let answer = route(&req);
    let _ = tx.send(req);
    let mut out = stream;
    let reason = |s: u16| match s {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        404 => "Not Found",
        _ => "Status",
    };
    match answer {
        Answer::Reply(status, extra, body) => {
            let mut head = format!(
                "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
                reason(status),
                body.len()
            );
            for (n, v) in extra {
                head.push_str(&format!("{n}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let _ = out.write_all(head.as_bytes());
            let _ = out.write_all(&body);
        }
        Answer::Unframed(status, body) => {
            let head = format!(
                "HTTP/1.1 {status} {}\r\nConnection: close\r\n\r\n",
                reason(status)
            );
            let _ = out.write_all(head.as_bytes());
            let _ = out.write_all(&body);
        }
        Answer::Hang => {
            // Block until the client closes its side: a read returns 0 (or fails).
            let mut buf = [0u8; 1024];
            while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
        }
    }
    let _ = out.flush();
}
