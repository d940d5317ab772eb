//! `http_get` and `tcp_socket` probes over tokio's `TcpStream`.
//!
//! Only this module opens network connections. It guarantees that unless
//! the probe says `allow_remote = true` or the context allows remote
//! hosts, no connection is attempted to an address that is not loopback
//! (127.0.0.0/8, `::1`, or their IPv4-mapped forms): the host is resolved
//! first and refused before any connect (validation refuses such a host
//! earlier, when it is written as one, see `spec::is_loopback_host`). The
//! HTTP client is deliberately minimal: one HTTP/1.1 GET with
//! `Connection: close`, no TLS, no redirects followed (a 3xx passes, as in
//! Kubernetes); only the status line is read.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{truncate, ProbeResult};
use crate::spec::{HttpGetAction, TcpSocketAction};

/// The longest status line read before giving up on a response.
const MAX_STATUS_LINE: usize = 8192;

pub(super) async fn tcp_socket(tcp: &TcpSocketAction, allow_remote: bool) -> ProbeResult {
    let addrs = match resolve(&tcp.host, tcp.port, allow_remote).await {
        Ok(addrs) => addrs,
        Err(reason) => return ProbeResult::failure(reason),
    };
    match connect(&addrs).await {
        Ok((_stream, addr)) => ProbeResult::success(format!("connected to {addr}")),
        Err(reason) => ProbeResult::failure(reason),
    }
}

pub(super) async fn http_get(http: &HttpGetAction, allow_remote: bool) -> ProbeResult {
    let addrs = match resolve(&http.host, http.port, allow_remote).await {
        Ok(addrs) => addrs,
        Err(reason) => return ProbeResult::failure(reason),
    };
    let (mut stream, addr) = match connect(&addrs).await {
        Ok(connected) => connected,
        Err(reason) => return ProbeResult::failure(reason),
    };
    let url = format!("http://{addr}{}", http.path);
    let request = request(http);
    if let Err(err) = stream.write_all(request.as_bytes()).await {
        return ProbeResult::failure(format!("GET {url}: cannot send the request: {err}"));
    }
    match read_status_line(&mut stream).await {
        Ok(line) => match parse_status(&line) {
            Some((code, reason)) if (200..400).contains(&code) => {
                ProbeResult::success(format!("GET {url}: HTTP {code} {reason}").trim_end().to_owned())
            }
            Some((code, reason)) => {
                ProbeResult::failure(format!("GET {url}: HTTP {code} {reason}").trim_end().to_owned())
            }
            None => ProbeResult::failure(format!("GET {url}: not an HTTP status line: {:?}", truncate(&line, 100))),
        },
        Err(reason) => ProbeResult::failure(format!("GET {url}: {reason}")),
    }
}

fn request(http: &HttpGetAction) -> String {
    let host_header = if http.host.contains(':') && !http.host.starts_with('[') {
        format!("[{}]:{}", http.host, http.port)
    } else {
        format!("{}:{}", http.host, http.port)
    };
    let mut request = format!("GET {} HTTP/1.1\r\n", http.path);
    // A Host given in http_headers replaces ours, as in Kubernetes.
    if !http.http_headers.iter().any(|h| h.name.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {host_header}\r\n"));
    }
    request.push_str(concat!(
        "User-Agent: corral-probe/",
        env!("CARGO_PKG_VERSION"),
        "\r\nAccept: */*\r\nConnection: close\r\n"
    ));
    for header in &http.http_headers {
        request.push_str(&format!("{}: {}\r\n", header.name, header.value));
    }
    request.push_str("\r\n");
    request
}

async fn read_status_line(stream: &mut TcpStream) -> Result<String, String> {
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        if let Some(end) = received.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&received[..end]);
            return Ok(line.trim_end_matches('\r').to_owned());
        }
        if received.len() > MAX_STATUS_LINE {
            return Err(format!("no status line in the first {MAX_STATUS_LINE} bytes"));
        }
        match stream.read(&mut buf).await {
            Ok(0) => return Err("the connection closed before a status line".to_owned()),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(err) => return Err(format!("cannot read the response: {err}")),
        }
    }
}

/// `HTTP/1.1 302 Found` → `(302, "Found")`.
fn parse_status(line: &str) -> Option<(u16, &str)> {
    let rest = line.strip_prefix("HTTP/")?;
    let (_version, rest) = rest.split_once(' ')?;
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    if code.len() != 3 {
        return None;
    }
    Some((code.parse().ok()?, reason.trim()))
}

/// The addresses `host` names, refused unless all are loopback or remote
/// hosts are allowed. Never connects.
async fn resolve(host: &str, port: u16, allow_remote: bool) -> Result<Vec<SocketAddr>, String> {
    let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let addrs: Vec<SocketAddr> = match literal.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|err| format!("cannot resolve {host}: {err}"))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    ensure_loopback(host, &addrs, allow_remote)?;
    Ok(addrs)
}

/// Refuses `addrs` unless every one is loopback or `allow_remote` is set.
pub(crate) fn ensure_loopback(host: &str, addrs: &[SocketAddr], allow_remote: bool) -> Result<(), String> {
    if allow_remote {
        return Ok(());
    }
    match addrs.iter().find(|addr| !addr.ip().to_canonical().is_loopback()) {
        None => Ok(()),
        Some(addr) => Err(format!(
            "{host} is {}, not a loopback address; probes reach only loopback hosts unless remote hosts are allowed",
            addr.ip()
        )),
    }
}

/// Connects to the first of `addrs` that accepts.
async fn connect(addrs: &[SocketAddr]) -> Result<(TcpStream, SocketAddr), String> {
    let mut last_error = String::new();
    for &addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok((stream, addr)),
            Err(err) => last_error = format!("cannot connect to {addr}: {err}"),
        }
    }
    Err(last_error)
}

#[cfg(test)]
mod tests {
    use super::super::tests::observations;
    use super::super::{run_probe, Outcome};
    use super::*;
    use crate::clock::{Clock, ManualClock, SystemClock};
    use crate::spec::{HttpHeader, ProbeKind, ProbeSet};
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    /// A tiny HTTP server on 127.0.0.1 port 0. `/ok` 200, `/moved` 302,
    /// `/broken` 500, `/token` 200 only with `X-Probe-Token: s3cret`,
    /// `/hang` never answers (and says so on the channel), anything else 404.
    async fn serve() -> (u16, mpsc::UnboundedReceiver<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (hanging, hung) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                let hanging = hanging.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let request = String::from_utf8_lossy(&request).to_lowercase();
                    let path = request.split(' ').nth(1).unwrap_or("").to_owned();
                    let status = match path.as_str() {
                        "/ok" => "200 OK",
                        "/moved" => "302 Found\r\nLocation: /ok",
                        "/broken" => "500 Internal Server Error",
                        "/token" if request.contains("\r\nx-probe-token: s3cret\r\n") => "200 OK",
                        "/token" => "401 Unauthorized",
                        "/hang" => {
                            let _ = hanging.send(());
                            std::future::pending::<&str>().await
                        }
                        _ => "404 Not Found",
                    };
                    let response = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        (port, hung)
    }

    fn http(port: u16, path: &str) -> HttpGetAction {
        HttpGetAction { port, path: path.into(), host: "127.0.0.1".into(), http_headers: vec![], allow_remote: false }
    }

    async fn get(action: HttpGetAction) -> ProbeResult {
        let ctx = observations(Path::new("/"), &ProbeSet::default(), Instant::now());
        run_probe(&ProbeKind::HttpGet(action), Duration::from_secs(10), &ctx, &SystemClock).await
    }

    /// A port nothing listens on: bound, then closed.
    async fn closed_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn http_get_passes_from_200_to_399_and_fails_otherwise() {
        let (port, _hung) = serve().await;
        assert_eq!(
            get(http(port, "/ok")).await,
            ProbeResult::success(format!("GET http://127.0.0.1:{port}/ok: HTTP 200 OK"))
        );
        assert_eq!(
            get(http(port, "/moved")).await,
            ProbeResult::success(format!("GET http://127.0.0.1:{port}/moved: HTTP 302 Found"))
        );
        assert_eq!(
            get(http(port, "/broken")).await,
            ProbeResult::failure(format!("GET http://127.0.0.1:{port}/broken: HTTP 500 Internal Server Error"))
        );
        assert_eq!(get(http(port, "/elsewhere")).await.outcome, Outcome::Failure);
    }

    #[tokio::test]
    async fn http_get_sends_the_configured_headers_and_resolves_localhost() {
        let (port, _hung) = serve().await;
        assert!(!get(http(port, "/token")).await.passed());
        let with_token = HttpGetAction {
            http_headers: vec![HttpHeader { name: "X-Probe-Token".into(), value: "s3cret".into() }],
            ..http(port, "/token")
        };
        assert!(get(with_token).await.passed());
        let by_name = HttpGetAction { host: "localhost".into(), ..http(port, "/ok") };
        let result = get(by_name).await;
        assert!(result.passed(), "{}", result.message);
    }

    #[tokio::test]
    async fn http_get_to_a_closed_port_fails() {
        let port = closed_port().await;
        let result = get(http(port, "/ok")).await;
        assert_eq!(result.outcome, Outcome::Failure);
        assert!(result.message.starts_with(&format!("cannot connect to 127.0.0.1:{port}")), "{}", result.message);
    }

    #[tokio::test]
    async fn http_get_that_gets_no_answer_times_out() {
        let (port, mut hung) = serve().await;
        let clock = Arc::new(ManualClock::new());
        let ctx = Arc::new(observations(Path::new("/"), &ProbeSet::default(), clock.now()));
        let run = {
            let (clock, ctx) = (clock.clone(), ctx.clone());
            tokio::spawn(async move {
                let kind = ProbeKind::HttpGet(http(port, "/hang"));
                run_probe(&kind, Duration::from_secs(1), &*ctx, &*clock).await
            })
        };
        tokio::time::timeout(Duration::from_secs(20), hung.recv()).await.expect("the request reaches the server");
        clock.advance_secs(1.0);
        let result =
            tokio::time::timeout(Duration::from_secs(20), run).await.expect("the run ends at its timeout").unwrap();
        assert_eq!(result, ProbeResult::timeout("timed out after 1s"));
    }

    #[tokio::test]
    async fn tcp_socket_passes_when_the_port_is_open() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let ctx = observations(Path::new("/"), &ProbeSet::default(), Instant::now());
        let kind = |port| ProbeKind::TcpSocket(TcpSocketAction { port, host: "127.0.0.1".into(), allow_remote: false });
        let open = run_probe(&kind(port), Duration::from_secs(10), &ctx, &SystemClock).await;
        assert_eq!(open, ProbeResult::success(format!("connected to 127.0.0.1:{port}")));
        drop(listener);
        let closed = run_probe(&kind(port), Duration::from_secs(10), &ctx, &SystemClock).await;
        assert_eq!(closed.outcome, Outcome::Failure);
        assert!(closed.message.contains("cannot connect"), "{}", closed.message);
    }

    #[test]
    fn only_loopback_addresses_are_allowed_by_default() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        for ok in ["127.0.0.1:80", "127.9.8.7:80", "[::1]:80", "[::ffff:127.0.0.1]:80"] {
            assert_eq!(ensure_loopback("h", &[addr(ok)], false), Ok(()), "{ok}");
        }
        for remote in ["192.0.2.1:80", "10.0.0.1:80", "[2001:db8::1]:80", "0.0.0.0:80"] {
            let err = ensure_loopback("h", &[addr(remote)], false).unwrap_err();
            assert!(err.contains("not a loopback address"), "{remote}: {err}");
            assert_eq!(ensure_loopback("h", &[addr(remote)], true), Ok(()));
        }
        // One remote address among loopback ones is enough to refuse.
        assert!(ensure_loopback("h", &[addr("127.0.0.1:80"), addr("192.0.2.1:80")], false).is_err());
    }

    #[tokio::test]
    async fn a_remote_host_is_refused_before_any_connection() {
        // resolve() never connects; the runners call it before connect().
        let err = resolve("192.0.2.1", 80, false).await.unwrap_err();
        assert!(err.contains("not a loopback address"), "{err}");
        assert_eq!(resolve("[::1]", 80, false).await.unwrap(), vec!["[::1]:80".parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status("HTTP/1.1 200 OK"), Some((200, "OK")));
        assert_eq!(parse_status("HTTP/1.0 302 Moved Temporarily"), Some((302, "Moved Temporarily")));
        assert_eq!(parse_status("HTTP/1.1 204"), Some((204, "")));
        assert_eq!(parse_status("SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status("HTTP/1.1 2000 OK"), None);
    }

    #[test]
    fn the_request_is_one_well_formed_get() {
        let request = request(&HttpGetAction { host: "::1".into(), ..http(8080, "/healthz?full=1") });
        assert!(request.starts_with("GET /healthz?full=1 HTTP/1.1\r\nHost: [::1]:8080\r\n"), "{request}");
        assert!(request.ends_with("Connection: close\r\n\r\n"), "{request}");
    }
}
