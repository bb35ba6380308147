//! The `GatewayAdmin` connection: the secret on every call, and gRPC
//! failures turned into one readable line (`NOT_FOUND: ...`).

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use gatemesh_proto::pb;
use gatemesh_proto::pb::gateway_admin_client::GatewayAdminClient;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::target::Target;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time past the call's own deadline that the CLI waits for the gateway's
/// answer, so a gateway that never answers cannot hang it.
const ANSWER_SLACK: Duration = Duration::from_secs(5);

pub struct AdminClient {
    inner: GatewayAdminClient<Channel>,
    secret: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl AdminClient {
    /// Dials `target`. Without a secret, only a client certificate can
    /// stand in for it (a gateway with `GATEWAY_TLS_SECRET_OPTIONAL=true`).
    pub async fn connect(target: &Target, secret: &str) -> anyhow::Result<Self> {
        let secret = match secret {
            "" if target.client_cert => None,
            "" => bail!("no secret: set GATEWAY_API_SECRET or pass --secret"),
            secret => Some(
                secret
                    .parse()
                    .map_err(|_| anyhow!("the secret must be printable ASCII"))?,
            ),
        };
        let url = &target.url;
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| anyhow!("invalid gateway URL {url:?}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if let Some(tls) = &target.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .with_context(|| format!("cannot use the TLS settings for {url}"))?;
        }
        // The causes stay separate errors: the one-line printer drops the
        // ones that repeat what is already said.
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to the gateway at {url}"))?;
        Ok(Self {
            inner: GatewayAdminClient::new(channel).max_decoding_message_size(64 << 20),
            secret,
        })
    }

    fn request<T>(&self, message: T, timeout: Option<Duration>) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(secret) = &self.secret {
            request
                .metadata_mut()
                .insert(gatemesh_proto::SECRET_METADATA_KEY, secret.clone());
        }
        if let Some(timeout) = timeout {
            request.set_timeout(timeout + ANSWER_SLACK);
        }
        request
    }

    pub async fn list_instances(&mut self) -> anyhow::Result<Vec<pb::InstanceInfo>> {
        let request = self.request(pb::ListInstancesRequest {}, Some(Duration::from_secs(10)));
        let response = self.inner.list_instances(request).await.map_err(status)?;
        Ok(response.into_inner().instances)
    }

    /// Calls through the gateway; `metadata` goes as the call's gRPC
    /// headers, which the gateway passes on to the handlers.
    pub async fn call(
        &mut self,
        request: pb::CallRequest,
        timeout: Option<Duration>,
        metadata: &[pb::MetadataEntry],
    ) -> anyhow::Result<pb::CallResponse> {
        let mut request = self.request(request, timeout);
        for entry in metadata {
            let key = tonic::metadata::AsciiMetadataKey::from_bytes(entry.key.as_bytes())
                .map_err(|_| anyhow!("--header {}: not a gRPC header name", entry.key))?;
            let value = entry
                .value
                .parse()
                .map_err(|_| anyhow!("--header {}: not a gRPC header value", entry.key))?;
            request.metadata_mut().insert(key, value);
        }
        let response = self.inner.call(request).await.map_err(status)?;
        Ok(response.into_inner())
    }
}

/// A call that ended with a gRPC status: its code (the exit status is
/// 64 + the code, see [`crate::exit_code`]; the call's span records it too)
/// and its line.
#[derive(Debug)]
pub struct CallFailed {
    pub code: tonic::Code,
    line: String,
}

impl std::fmt::Display for CallFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.line)
    }
}

impl std::error::Error for CallFailed {}

/// `CODE: message`, the gateway's own words after the code's name. A
/// status made on this side (a broken connection, a failed handshake)
/// keeps its causes.
pub fn status(status: tonic::Status) -> anyhow::Error {
    let mut segments = vec![code_name(status.code()).to_string()];
    if !status.message().is_empty() {
        segments.push(status.message().to_string());
    }
    segments.extend(crate::causes(std::error::Error::source(&status)));
    anyhow::Error::new(CallFailed {
        code: status.code(),
        line: crate::one_line(segments),
    })
}

pub use gatemesh_proto::code_name;
