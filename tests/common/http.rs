//! A minimal HTTP/1.1 client for the operator endpoints: one GET per
//! connection, `Connection: close`, read to the end.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `GET path` on `addr`; the status code and the body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    get_with(addr, path, &[]).await
}

/// `GET path` with extra request `headers`; the status code and the body.
pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_response(stream).await
}

async fn read_response(mut stream: TcpStream) -> (u16, String) {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let chunked = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

/// `GET path` and parse the body as JSON.
pub async fn get_json(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = get(addr, path).await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, json)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// Serves `gateway`'s operator endpoints on an ephemeral loopback port
/// until the test's runtime ends.
pub async fn serve(gateway: &gatemesh_gateway::Gateway) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        gateway
            .clone()
            .serve_http(listener, std::future::pending::<()>()),
    );
    addr
}

/// Serves `gateway`'s operator endpoints as on a port off loopback (bound
/// to every address, reached through loopback): `/instances` asks for a
/// secret there.
pub async fn serve_exposed(gateway: &gatemesh_gateway::Gateway) -> SocketAddr {
    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        gateway
            .clone()
            .serve_http(listener, std::future::pending::<()>()),
    );
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The value of the sample `name{labels}` in a Prometheus text body, where
/// `labels` is the exact label text (`""` for none); 0 when absent.
pub fn sample(body: &str, name: &str, labels: &str) -> f64 {
    let key = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == key).then(|| v.parse().expect("a number"))
        })
        .unwrap_or(0.0)
}

/// Runs `promtool check metrics` on `body`; `None` when promtool is not
/// installed and [`super::e2e::require`] lets the test skip that check.
pub fn promtool(body: &str) -> Option<(bool, String)> {
    if !super::e2e::require(&[super::e2e::Need::Promtool]) {
        return None;
    }
    let mut child = std::process::Command::new(super::e2e::find_program("promtool").unwrap())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run promtool: {e}"));
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

/// An instance `id` of `env` on `gateway`, serving FindVPSByLease (it
/// knows `aa:aa` as `vps-a`), with its `/health` and `/metrics` on an
/// ephemeral loopback port: the instance, its metrics and that port.
pub async fn serve_instance(
    gateway: &super::TestGateway,
    id: &str,
    env: &str,
) -> (
    gatemesh_service::InstanceHandle,
    std::sync::Arc<gatemesh_service::ServiceMetrics>,
    SocketAddr,
) {
    use gatemesh_service::{Instance, ServiceMetrics, http::HttpState};
    let mut registry = gatemesh_handlers::Registry::new();
    registry
        .method::<gatemesh_proto::methods::FindVpsByLease>(super::knows("aa:aa", "vps-a"))
        .unwrap();
    let metrics = std::sync::Arc::new(ServiceMetrics::for_instance());
    let mut options = super::options(id, env);
    options.dispatch.observer = Some(metrics.clone());
    let instance = Instance::new(options, registry).start([gateway.url()]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = HttpState::new(instance.id(), instance.links(), metrics.clone());
    tokio::spawn(gatemesh_service::http::serve(
        state,
        listener,
        std::future::pending(),
    ));
    (instance, metrics, addr)
}
