//! Every mesh method as an ordinary gRPC service on the gateway's port, so
//! any generated client (or grpcurl, through reflection) calls
//! `/gatemesh.v1.InstanceMethods/FindVPSByLease` as it would any server.
//!
//! The payload is never decoded on the way: [`BytesCodec`] hands the
//! request's bytes to the mesh and the winning answer's bytes back. A call
//! of an instance-served method goes through the [`Mesh`] by the strategy
//! the caller names (`first_valid` by default); one of a gateway-served
//! method is answered by the gateway's own registry, as the admin API
//! does. Callers steer a call with metadata ([`ENVIRONMENT`],
//! [`INSTANCE`], [`STRATEGY`]); the deadline is the call's `grpc-timeout`;
//! a failure is the call's status, with the code `CallError` maps to.
//!
//! `all` answers many: the call is then a server stream of the method's
//! response messages, one per instance that answered, sorted by instance
//! id, named in order in the [`INSTANCES`] response header; each instance
//! that failed is a [`FAILED`] header. Its status is `OK` when the
//! fan-out ran, whatever each instance answered, as with the admin API.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use gatemesh_handlers::dispatch::code_name;
use gatemesh_proto::codec::BytesCodec;
use gatemesh_proto::methods::{KnownMethod, Side};
use tonic::body::Body;
use tonic::codegen::{Body as HttpBody, StdError, http};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::server::{Grpc, ServerStreamingService, UnaryService};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::admin::LocalMethods;
use crate::auth::CallerAuth;
use crate::credentials::Principal;
use crate::headers::ForwardHeaders;
use crate::{Mesh, Reply, Route, Strategy};

/// Request metadata: only instances of this environment.
pub const ENVIRONMENT: &str = "gatemesh-environment";
/// Request metadata: only this instance.
pub const INSTANCE: &str = "gatemesh-instance";
/// Request metadata: `first_valid` (the default), `one` or `all`.
pub const STRATEGY: &str = "gatemesh-strategy";
/// Response header of `first_valid` and `one`: who answered (also the
/// gateway's id for its own methods); with [`ANSWERED_ENVIRONMENT`].
pub const ANSWERED_BY: &str = "gatemesh-instance";
/// Response header: the environment of the instance that answered.
pub const ANSWERED_ENVIRONMENT: &str = "gatemesh-environment";
/// Response header of `all`: the instances whose answers follow, in order,
/// comma-separated.
pub const INSTANCES: &str = "gatemesh-instances";
/// Response header of `all`, once per instance that failed:
/// `<instance> <CODE>: <message>`.
pub const FAILED: &str = "gatemesh-failed";

/// The deadline the mesh keeps is this much shorter than the caller's
/// (at most), so that the mesh's own `DEADLINE_EXCEEDED`, which names the
/// deadline, reaches the caller before tonic's timer cancels the call.
/// 5 ms was too little on a loaded machine (the caller's own timer won,
/// and it saw a bare `CANCELLED`); a tenth of the deadline, at most 50 ms,
/// leaves the answer time to travel.
const DEADLINE_MARGIN: Duration = Duration::from_millis(50);

/// The methods of every catalogue service, as one tower service that
/// dispatches on the request's path. Clone is cheap.
#[derive(Clone)]
pub struct MethodsService {
    inner: Arc<Inner>,
}

struct Inner {
    mesh: Mesh,
    /// Which of the caller's headers cross into the mesh.
    forward: ForwardHeaders,
    local: LocalMethods,
    auth: CallerAuth,
    max_message_bytes: usize,
}

impl MethodsService {
    pub(crate) fn new(
        mesh: Mesh,
        forward: ForwardHeaders,
        local: LocalMethods,
        auth: CallerAuth,
        max_message_bytes: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                mesh,
                forward,
                local,
                auth,
                max_message_bytes,
            }),
        }
    }

    /// Adds a route per catalogue service to `routes`.
    pub(crate) fn route(self, mut routes: tonic::service::Routes) -> tonic::service::Routes {
        for service in self.inner.mesh.catalogue().services() {
            let router = std::mem::take(routes.axum_router_mut());
            *routes.axum_router_mut() =
                router.route_service(&format!("/{service}/{{*method}}"), self.clone());
        }
        routes
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for MethodsService
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { Ok(serve(inner, request).await) })
    }
}

/// One call: the method from the path, the shape from the strategy.
async fn serve<B>(inner: Arc<Inner>, request: http::Request<B>) -> http::Response<Body>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send,
{
    let path = request.uri().path();
    let method = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .and_then(|(service, name)| inner.mesh.catalogue().by_path(service, name));
    let Some(method) = method else {
        return Status::unimplemented(format!("no method {path} on this gateway")).into_http();
    };
    let strategy = match strategy(request.headers().get(STRATEGY).map(|v| v.as_bytes())) {
        Ok(strategy) => strategy,
        Err(status) => return status.into_http(),
    };
    // Room for the largest payload the mesh carries, as on the streams.
    let limit = inner.max_message_bytes;
    let mut grpc = Grpc::new(BytesCodec)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let call = Call {
        inner,
        method,
        strategy,
    };
    match strategy {
        Strategy::All => grpc.server_streaming(call, request).await,
        Strategy::FirstValid | Strategy::One => grpc.unary(call, request).await,
    }
}

/// The strategy a caller named; `first_valid` when none.
fn strategy(value: Option<&[u8]>) -> Result<Strategy, Status> {
    match value {
        None | Some(b"") | Some(b"first_valid") | Some(b"first-valid") => Ok(Strategy::FirstValid),
        Some(b"one") => Ok(Strategy::One),
        Some(b"all") => Ok(Strategy::All),
        Some(other) => Err(Status::invalid_argument(format!(
            "{STRATEGY}: expected first_valid, one or all, got {:?}",
            String::from_utf8_lossy(other)
        ))),
    }
}

/// A `grpc-timeout` value (`100m`, `5S`, ...): at most 8 digits and a unit,
/// as the gRPC spec has it. `None` when there is none; an error when it
/// does not parse.
fn grpc_timeout(metadata: &MetadataMap) -> Result<Option<Duration>, Status> {
    let Some(value) = metadata.get("grpc-timeout") else {
        return Ok(None);
    };
    let bad = || Status::invalid_argument(format!("grpc-timeout: cannot parse {value:?}"));
    let text = value.to_str().map_err(|_| bad())?;
    let (digits, unit) = text
        .split_at_checked(text.len().saturating_sub(1))
        .ok_or_else(bad)?;
    if digits.is_empty() || digits.len() > 8 {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    Ok(Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad()),
    }))
}

/// A header value, unset when empty.
fn text(metadata: &MetadataMap, key: &str) -> Result<Option<String>, Status> {
    match metadata.get(key).map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok("")) => Ok(None),
        Some(Ok(value)) => Ok(Some(value.to_string())),
        Some(Err(_)) => Err(Status::invalid_argument(format!(
            "{key}: only printable ASCII is allowed"
        ))),
    }
}

/// One call of one method.
#[derive(Clone)]
struct Call {
    inner: Arc<Inner>,
    method: &'static KnownMethod,
    strategy: Strategy,
}

impl Call {
    /// The caller its credential proves, then the route the metadata asks
    /// for, within the caller's environments.
    fn route(&self, request: &Request<Bytes>) -> Result<(Route, Principal), Status> {
        let principal = self.inner.auth.principal_of(request)?;
        let headers = request.metadata();
        // The caller's headers on the allow-list, as for the admin API; the
        // routing keys never cross (`gatemesh-*` names cannot be on it).
        let metadata = self
            .inner
            .forward
            .crossing(headers, &self.inner.local.stats.headers_not_forwarded)?;
        let timeout = grpc_timeout(headers)?.map(|t| {
            t.saturating_sub(DEADLINE_MARGIN.min(t / 10))
                .max(Duration::from_millis(1))
        });
        let route = Route {
            strategy: self.strategy,
            instance: text(headers, INSTANCE)?,
            environment: text(headers, ENVIRONMENT)?,
            timeout,
            metadata,
            within: principal.scope.clone(),
        };
        Ok((route, principal))
    }

    /// The answers of the call: one for `first_valid` and `one`, one per
    /// instance for `all`.
    async fn answers(&self, request: Request<Bytes>) -> Result<Vec<Reply<Bytes>>, Status> {
        let remote = request.remote_addr();
        let (mut route, principal) = self.route(&request)?;
        let auth = &self.inner.auth;
        let payload = request.into_inner();
        let name = self.method.name;
        let span = crate::trace::admin_span(name, self.strategy, &mut route.metadata);
        async {
            if self.method.served_by == Side::Gateway {
                let caller = principal.local_caller().map_err(|refusal| {
                    auth.record(&refusal, remote);
                    Status::from(&refusal)
                })?;
                let (payload, latency) = self
                    .inner
                    .local
                    .call(self.method, payload, &route, caller)
                    .await?;
                let reply = Reply {
                    instance: self.inner.local.gateway_id().into(),
                    environment: "".into(),
                    outcome: Ok(payload),
                    latency,
                };
                return Ok(vec![reply]);
            }
            self.inner
                .mesh
                .call_raw(name, payload, &route)
                .await
                .map_err(|e| {
                    // A call outside the caller's environments is a refusal
                    // at the trust boundary, counted as one.
                    if let Some(refusal) = e.refusal() {
                        auth.record(&refusal, remote);
                    }
                    Status::from(e)
                })
        }
        .instrument(span)
        .await
    }
}

/// `value` as a header value: printable ASCII kept, anything else `?`.
fn header(value: &str) -> MetadataValue<tonic::metadata::Ascii> {
    let clean: String = value
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect();
    MetadataValue::try_from(clean.as_str()).unwrap_or_else(|_| MetadataValue::from_static("?"))
}

impl UnaryService<Bytes> for Call {
    type Response = Bytes;
    type Future = BoxFuture<'static, Result<Response<Bytes>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let call = self.clone();
        Box::pin(async move {
            let mut replies = call.answers(request).await?;
            let reply = replies
                .pop()
                .ok_or_else(|| Status::internal("the mesh returned no answer"))?;
            let payload = reply.outcome?;
            let mut response = Response::new(payload);
            let headers = response.metadata_mut();
            headers.insert(ANSWERED_BY, header(&reply.instance));
            if !reply.environment.is_empty() {
                headers.insert(ANSWERED_ENVIRONMENT, header(&reply.environment));
            }
            Ok(response)
        })
    }
}

type Answers = tokio_stream::Iter<std::vec::IntoIter<Result<Bytes, Status>>>;

impl ServerStreamingService<Bytes> for Call {
    type Response = Bytes;
    type ResponseStream = Answers;
    type Future = BoxFuture<'static, Result<Response<Answers>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let call = self.clone();
        Box::pin(async move {
            let replies = call.answers(request).await?;
            let mut answered = Vec::new();
            let mut answers = Vec::new();
            let mut failed = Vec::new();
            for reply in replies {
                match reply.outcome {
                    Ok(payload) => {
                        answered.push(reply.instance.to_string());
                        answers.push(Ok(payload));
                    }
                    Err(e) => {
                        failed.push(format!("{} {}: {e}", reply.instance, code_name(e.code())))
                    }
                }
            }
            let mut response = Response::new(tokio_stream::iter(answers));
            let headers = response.metadata_mut();
            headers.insert(INSTANCES, header(&answered.join(",")));
            for failure in failed {
                headers.append(FAILED, header(&failure));
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_are_spelled_as_everywhere_else() {
        assert_eq!(strategy(None).unwrap(), Strategy::FirstValid);
        assert_eq!(
            strategy(Some(b"first-valid")).unwrap(),
            Strategy::FirstValid
        );
        assert_eq!(strategy(Some(b"one")).unwrap(), Strategy::One);
        assert_eq!(strategy(Some(b"all")).unwrap(), Strategy::All);
        let bad = strategy(Some(b"most")).unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        assert!(bad.message().contains("gatemesh-strategy"), "{bad:?}");
    }

    #[test]
    fn grpc_timeouts_parse_as_the_spec_has_them() {
        let parse = |value: &str| {
            let mut metadata = MetadataMap::new();
            metadata.insert("grpc-timeout", value.parse().unwrap());
            grpc_timeout(&metadata)
        };
        assert_eq!(parse("250m").unwrap(), Some(Duration::from_millis(250)));
        assert_eq!(parse("3S").unwrap(), Some(Duration::from_secs(3)));
        assert_eq!(parse("1H").unwrap(), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse("99999999u").unwrap(),
            Some(Duration::from_micros(99_999_999))
        );
        for bad in ["", "m", "123456789m", "10x", "1.5S"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(grpc_timeout(&MetadataMap::new()).unwrap(), None);
    }
}
