//! `GatewayAdmin`: the unary API for callers outside the gateway process.
//! Each call's caller is established by [`crate::auth::CallerAuth`] from
//! its credential: a [`Principal`], the environments it may reach. Its
//! calls go only there (naming another environment, or an instance of
//! one, is `PERMISSION_DENIED`), and it lists only their instances.
//!
//! A call of an instance-served method goes through the [`Mesh`]; a call of
//! a gateway-served method (`GatewayMethods` in `methods.proto`) is answered
//! by the gateway's own registry, as one result under the gateway's id.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gatemesh_handlers::{Caller, Context, Handlers};
use gatemesh_proto::methods::{KnownMethod, Side};
use gatemesh_proto::pb;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument as _;

use crate::credentials::Principal;
use crate::headers::ForwardHeaders;
use crate::refusal::{Port, Refusal, Refusals};
use crate::stats::Stats;
use crate::{CallError, Instances, Mesh, Peer, Reply, Route, Strategy};

pub struct AdminService {
    pub(crate) mesh: Mesh,
    /// Which of a caller's headers reach the instances.
    pub(crate) forward: ForwardHeaders,
    pub(crate) instances: Arc<Instances>,
    /// What the gateway itself serves, for calls of gateway-served methods.
    pub(crate) local: LocalMethods,
    /// Where a confined caller's refusals are counted.
    pub(crate) refusals: Arc<Refusals>,
}

/// The gateway's own methods, as the admin API calls them.
pub(crate) struct LocalMethods {
    pub(crate) handlers: Arc<Handlers>,
    pub(crate) gateway_id: String,
    pub(crate) stats: Arc<Stats>,
    pub(crate) default_timeout: Duration,
}

/// Why a call of a gateway-served method from the admin API failed.
#[derive(Debug, thiserror::Error)]
enum LocalCallError {
    /// The route picks or filters instances; one gateway has none to pick.
    #[error(
        "{method} is served by the gateway itself, so {what} makes no sense for it: call it \
         with the first_valid strategy (the default) and no instance or environment filter"
    )]
    Route { method: &'static str, what: String },
    /// In the catalogue, but not served by this gateway (e.g. `GetLeases`
    /// without the DHCP manager).
    #[error("this gateway does not serve {0}")]
    NotServed(&'static str),
    #[error("{method}: deadline of {} ms passed", .timeout.as_millis())]
    DeadlineExceeded {
        method: &'static str,
        timeout: Duration,
    },
    #[error("{method}: {}", .error.message())]
    Handler { method: &'static str, error: Status },
    #[error("{0}: the handler panicked")]
    Panicked(&'static str),
    /// The answer is not valid for the method (its "not mine").
    #[error("{0}: the gateway has no valid answer")]
    NotFound(&'static str),
}

impl LocalCallError {
    fn code(&self) -> Code {
        match self {
            Self::Route { .. } => Code::InvalidArgument,
            Self::NotServed(_) => Code::Unimplemented,
            Self::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Self::Handler { error, .. } => error.code(),
            Self::Panicked(_) => Code::Internal,
            Self::NotFound(_) => Code::NotFound,
        }
    }
}

impl From<&LocalCallError> for Status {
    fn from(e: &LocalCallError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

impl LocalMethods {
    /// Calls `method` on this gateway's registry, counts the call like one
    /// through the mesh (`gatemesh_gateway_calls_total`) and logs a failure
    /// once: the answer's payload and how long it took.
    pub(crate) async fn call(
        &self,
        method: &'static KnownMethod,
        payload: Bytes,
        route: &Route,
        caller: Caller,
    ) -> Result<(Bytes, Duration), Status> {
        let started = Instant::now();
        let result = self.run(method, payload, route, caller).await;
        let code = result.as_ref().err().map_or(Code::Ok, LocalCallError::code);
        self.stats
            .record_call(method.name, route.strategy.label(), code, started.elapsed());
        match result {
            Ok(payload) => Ok((payload, started.elapsed())),
            Err(e) => {
                match e.code() {
                    Code::InvalidArgument | Code::Unimplemented | Code::NotFound => {
                        gatemesh_runtime::limited!(tracing::Level::DEBUG,
                            method = method.name, error = %e, "gateway method call refused")
                    }
                    _ => gatemesh_runtime::limited!(tracing::Level::WARN,
                        method = method.name, error = %e, "gateway method call failed"),
                }
                Err((&e).into())
            }
        }
    }

    /// This gateway's name, the one its own answers carry.
    pub(crate) fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    async fn run(
        &self,
        method: &'static KnownMethod,
        payload: Bytes,
        route: &Route,
        caller: Caller,
    ) -> Result<Bytes, LocalCallError> {
        let refuse = |what: String| LocalCallError::Route {
            method: method.name,
            what,
        };
        match route.strategy {
            Strategy::FirstValid => {}
            Strategy::All => return Err(refuse("the strategy all".into())),
            Strategy::One => return Err(refuse("the strategy one".into())),
        }
        if let Some(instance) = &route.instance {
            return Err(refuse(format!("an instance ({instance:?})")));
        }
        if let Some(environment) = &route.environment {
            return Err(refuse(format!("an environment filter ({environment:?})")));
        }
        if !self.handlers.contains(method.name) {
            return Err(LocalCallError::NotServed(method.name));
        }
        let timeout = route.timeout.unwrap_or(self.default_timeout);
        let cancel = CancellationToken::new();
        // The admin caller dropping its request drops this future: the
        // handler is told through its context, as on the stream.
        let _cancel_on_drop = cancel.clone().drop_guard();
        // The handler's calls continue the admin call's trace.
        let metadata = gatemesh_handlers::Metadata::from_wire(
            gatemesh_handlers::trace::outgoing_current(route.metadata.clone()),
        )
        .unwrap_or_default();
        let ctx =
            Context::new(caller, Instant::now() + timeout, cancel.clone()).with_metadata(metadata);
        // A panicking handler fails this call only (the panic is caught),
        // not the admin connection.
        let work = self
            .handlers
            .handle(method.name, ctx, payload)
            .ok_or(LocalCallError::NotServed(method.name))?;
        let answer = match tokio::time::timeout(timeout, work).await {
            Err(_) => {
                cancel.cancel();
                return Err(LocalCallError::DeadlineExceeded {
                    method: method.name,
                    timeout,
                });
            }
            Ok(Err(_)) => return Err(LocalCallError::Panicked(method.name)),
            Ok(Ok(Err(error))) => {
                return Err(LocalCallError::Handler {
                    method: method.name,
                    error,
                });
            }
            Ok(Ok(Ok(answer))) => answer,
        };
        if !(method.is_valid)(&answer) {
            return Err(LocalCallError::NotFound(method.name));
        }
        Ok(answer)
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

pub(crate) fn instance_info(peer: &Peer) -> pb::InstanceInfo {
    use std::sync::atomic::Ordering::Relaxed;
    let mut methods: Vec<String> = peer.info.methods.iter().cloned().collect();
    methods.sort();
    pb::InstanceInfo {
        instance_id: peer.info.id().to_string(),
        environment: peer.info.environment().to_string(),
        version: peer.info.version.clone(),
        methods,
        remote_addr: peer
            .info
            .remote_addr
            .map(|a| a.to_string())
            .unwrap_or_default(),
        connected_since_ms: unix_ms(peer.info.connected_since),
        last_seen_ms: unix_ms(peer.last_seen()),
        in_flight: peer.in_flight() as u64,
        calls_served: peer.calls_served.load(Relaxed),
        errors: peer.errors.load(Relaxed),
        proof: peer.info.proof().as_str().into(),
    }
}

fn result(reply: Reply<bytes::Bytes>) -> pb::InstanceResult {
    pb::InstanceResult {
        instance_id: reply.instance.to_string(),
        environment: reply.environment.to_string(),
        outcome: Some(match reply.outcome {
            Ok(payload) => pb::instance_result::Outcome::Payload(payload),
            Err(e) => pb::instance_result::Outcome::Status((&e).into()),
        }),
        latency_us: reply.latency.as_micros() as u64,
    }
}

#[tonic::async_trait]
impl pb::gateway_admin_server::GatewayAdmin for AdminService {
    async fn call(
        &self,
        request: Request<pb::CallRequest>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        let principal = crate::auth::principal(&request)?;
        let remote = request.remote_addr();
        // The caller's gRPC headers on the allow-list go on to the
        // instances as metadata; a `traceparent` among them makes this call
        // part of its trace.
        let mut metadata = self
            .forward
            .crossing(request.metadata(), &self.local.stats.headers_not_forwarded)?;
        let request = request.into_inner();
        let strategy = match request.strategy() {
            pb::Strategy::Unspecified | pb::Strategy::FirstValid => Strategy::FirstValid,
            pb::Strategy::All => Strategy::All,
            pb::Strategy::One => Strategy::One,
        };
        let span = crate::trace::admin_span(&request.method, strategy, &mut metadata);
        let route = Route {
            strategy,
            instance: non_empty(request.instance_id),
            environment: non_empty(request.environment),
            timeout: (request.timeout_ms > 0)
                .then(|| Duration::from_millis(request.timeout_ms.into())),
            metadata,
            within: principal.scope.clone(),
        };
        let result = self
            .route_call(request.method, request.payload, route, &principal)
            .instrument(span.clone())
            .await;
        if let Err(AdminError::Refused { refusal, .. }) = &result {
            self.refusals.record(Port::Grpc, refusal, remote);
        }
        let result = result.map_err(AdminError::into_status);
        crate::trace::admin_finished(&span, result.as_ref().map(|_| ()));
        result
    }

    async fn list_instances(
        &self,
        request: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let principal = crate::auth::principal(&request)?;
        let instances = self
            .instances
            .snapshot()
            .iter()
            .filter(|p| principal.scope.allows(p.info.environment()))
            .map(|p| instance_info(p))
            .collect();
        Ok(Response::new(pb::ListInstancesResponse { instances }))
    }
}

/// A failed admin call: refused at the trust boundary (counted as such),
/// or failed for any other reason.
enum AdminError {
    /// `told`: what the caller is told, which may say less than the
    /// refusal ([`CallError::InstanceOutsideScope`]).
    Refused {
        refusal: Refusal,
        told: Status,
    },
    Failed(Status),
}

impl AdminError {
    fn into_status(self) -> Status {
        match self {
            AdminError::Refused { told, .. } | AdminError::Failed(told) => told,
        }
    }
}

impl From<Refusal> for AdminError {
    fn from(refusal: Refusal) -> Self {
        AdminError::Refused {
            told: Status::from(&refusal),
            refusal,
        }
    }
}

impl From<Status> for AdminError {
    fn from(status: Status) -> Self {
        AdminError::Failed(status)
    }
}

impl From<CallError> for AdminError {
    fn from(e: CallError) -> Self {
        match e.refusal() {
            Some(refusal) => AdminError::Refused {
                refusal,
                told: e.into(),
            },
            None => AdminError::Failed(e.into()),
        }
    }
}

impl AdminService {
    /// A call of a gateway-served method goes to the gateway's own
    /// registry, any other through the mesh.
    async fn route_call(
        &self,
        method: String,
        payload: Bytes,
        route: Route,
        principal: &Principal,
    ) -> Result<Response<pb::CallResponse>, AdminError> {
        if let Some(known) = self.mesh.catalogue().get(&method)
            && known.served_by == Side::Gateway
        {
            let caller = principal.local_caller().map_err(AdminError::from)?;
            let (payload, latency) = self.local.call(known, payload, &route, caller).await?;
            return Ok(Response::new(pb::CallResponse {
                results: vec![pb::InstanceResult {
                    instance_id: self.local.gateway_id.clone(),
                    environment: String::new(),
                    outcome: Some(pb::instance_result::Outcome::Payload(payload)),
                    latency_us: latency.as_micros() as u64,
                }],
            }));
        }
        let replies = self.mesh.call_raw(&method, payload, &route).await?;
        Ok(Response::new(pb::CallResponse {
            results: replies.into_iter().map(result).collect(),
        }))
    }
}
