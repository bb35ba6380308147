//! Method name to handler: [`Registry`], typed by the side that serves it,
//! and [`Handlers`], the table it turns into for the dispatcher.

use foldhash::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use gatemesh_proto::methods::{self, GatewaySide, InstanceSide, ServedBy, ServingSide};

use crate::serve::{Raw, Serve};
use crate::typed::{MethodHandler, Typed};
use crate::{MAX_METHOD_NAME_LEN, RequestHandler};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("method {0:?} is already registered")]
    Duplicate(String),
    #[error("method name must be 1 to {MAX_METHOD_NAME_LEN} bytes, got {0} bytes")]
    BadName(usize),
    /// A raw handler under the name of a method in `methods.proto`: it would
    /// skip the method's types, so the typed registration is required.
    #[error(
        "method {0:?} is in methods.proto: register it with `Registry::method::<{0}>`, not as \
         raw bytes"
    )]
    CatalogueName(String),
}

/// The handlers one side of the stream serves, by method name; built at
/// start-up, then shared read-only.
///
/// `S` is the side ([`InstanceSide`] or [`GatewaySide`]), so a registry
/// only takes methods that side serves: `registry.method::<GetLeases>(..)`
/// on an instance's registry does not compile. Usually inferred: a
/// `Registry::new()` handed to `Instance::new` is an instance's.
pub struct Registry<S> {
    handlers: Handlers,
    _side: PhantomData<fn() -> S>,
}

/// What an instance serves (rpcs of `InstanceMethods`).
pub type InstanceRegistry = Registry<InstanceSide>;
/// What the gateway serves (rpcs of `GatewayMethods`).
pub type GatewayRegistry = Registry<GatewaySide>;

impl<S: ServingSide> Default for Registry<S> {
    fn default() -> Self {
        Self {
            handlers: Handlers::default(),
            _side: PhantomData,
        }
    }
}

impl<S: ServingSide> Clone for Registry<S> {
    fn clone(&self) -> Self {
        Self {
            handlers: self.handlers.clone(),
            _side: PhantomData,
        }
    }
}

impl<S: ServingSide> Registry<S> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `M` with a typed handler: an `async fn(Context, M::Request) ->
    /// Result<M::Response, Status>` or a [`MethodHandler<M>`]:
    /// `registry.method::<FindVpsByLease>(handler)?`.
    pub fn method<M: ServedBy<S>>(
        &mut self,
        handler: impl MethodHandler<M>,
    ) -> Result<&mut Self, RegistryError> {
        self.handlers.insert(M::NAME, Typed::<M, _>::new(handler))?;
        Ok(self)
    }

    /// The escape hatch: serves `name` with a handler on raw protobuf bytes,
    /// for methods that are not in `methods.proto` (frames from peers
    /// written in other languages, test peers). Nothing checks the bytes'
    /// types, so the names of `methods.proto` are refused: those take
    /// [`Self::method`].
    pub fn register_raw(
        &mut self,
        name: &str,
        handler: impl RequestHandler,
    ) -> Result<&mut Self, RegistryError> {
        if methods::known_method(name).is_some() {
            return Err(RegistryError::CatalogueName(name.to_string()));
        }
        self.handlers.insert(name, Raw(handler))?;
        Ok(self)
    }

    /// Whether `name` is served.
    pub fn contains(&self, name: &str) -> bool {
        self.handlers.contains(name)
    }

    /// The served method names, sorted (they go into hello and welcome).
    pub fn methods(&self) -> Vec<String> {
        self.handlers.methods()
    }

    /// The name-to-handler table that the [`Dispatcher`](crate::Dispatcher)
    /// runs; the side has been checked by then.
    pub fn into_handlers(self) -> Handlers {
        self.handlers
    }
}

impl<S: ServingSide> std::fmt::Debug for Registry<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("side", &S::SIDE)
            .field("methods", &self.methods())
            .finish()
    }
}

/// A built [`Registry`]: handlers by method name, without the side (which
/// the registry checked). What the dispatcher looks requests up in.
#[derive(Clone, Default)]
pub struct Handlers {
    handlers: HashMap<Arc<str>, Arc<Entry>>,
}

/// One served method: its handler, and what the dispatcher learned of it.
pub(crate) struct Entry {
    /// The registered name, shared: the dispatcher's label for the call.
    pub(crate) name: Arc<str>,
    pub(crate) handler: Arc<dyn Serve>,
    /// First polls of this handler in a row that ran past the inline
    /// budget. From the [`SLOW_STRIKES`](crate::dispatch::SLOW_STRIKES)th
    /// on, its requests start in their own task, so the stream's reader no
    /// longer waits on it; a cold call or a preempted thread alone does not
    /// decide it.
    pub(crate) slow_first_polls: std::sync::atomic::AtomicU32,
}

impl Handlers {
    fn insert(&mut self, name: &str, handler: impl Serve) -> Result<(), RegistryError> {
        if name.is_empty() || name.len() > MAX_METHOD_NAME_LEN {
            return Err(RegistryError::BadName(name.len()));
        }
        if self.handlers.contains_key(name) {
            return Err(RegistryError::Duplicate(name.to_string()));
        }
        let name: Arc<str> = name.into();
        let entry = Entry {
            name: name.clone(),
            handler: Arc::new(handler),
            slow_first_polls: std::sync::atomic::AtomicU32::new(0),
        };
        self.handlers.insert(name, Arc::new(entry));
        Ok(())
    }

    /// Whether `name` is served.
    pub fn contains(&self, name: &str) -> bool {
        self.handlers.contains_key(name)
    }

    /// Runs the handler of `name` outside any stream (the gateway's admin
    /// API calls its own handlers so): decode, handler, encode, with a
    /// panic caught and returned as `Err`. `None` when `name` is not served.
    pub fn handle(
        &self,
        name: &str,
        ctx: crate::Context,
        payload: bytes::Bytes,
    ) -> Option<impl Future<Output = crate::serve::HandlerResult> + Send + 'static> {
        let entry = self.handlers.get(name)?;
        Some(Arc::clone(&entry.handler).serve(ctx, &entry.name, payload, tracing::Span::current()))
    }

    pub(crate) fn entry(&self, name: &str) -> Option<&Arc<Entry>> {
        self.handlers.get(name)
    }

    /// The served method names, sorted.
    pub fn methods(&self) -> Vec<String> {
        let mut names: Vec<String> = self.handlers.keys().map(|k| k.to_string()).collect();
        names.sort();
        names
    }
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handlers")
            .field("methods", &self.methods())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Context, Status};
    use async_trait::async_trait;
    use bytes::Bytes;
    use gatemesh_proto::Method as _;
    use gatemesh_proto::methods::{FindVpsByLease, GetLeases};

    struct Raw;

    #[async_trait]
    impl RequestHandler for Raw {
        async fn handle(&self, _: Context, _: &str, p: Bytes) -> Result<Bytes, Status> {
            Ok(p)
        }
    }

    #[test]
    fn a_method_is_registered_once_and_by_its_wire_name() {
        let mut reg = InstanceRegistry::new();
        reg.method::<FindVpsByLease>(|_ctx, _req| async {
            Ok::<_, tonic::Status>(Default::default())
        })
        .unwrap();
        assert_eq!(reg.methods(), ["FindVPSByLease"]);
        let again = reg.method::<FindVpsByLease>(|_ctx, _req| async {
            Ok::<_, tonic::Status>(Default::default())
        });
        assert_eq!(
            again.unwrap_err(),
            RegistryError::Duplicate("FindVPSByLease".into())
        );
    }

    #[test]
    fn raw_handlers_cannot_take_a_catalogue_name() {
        let mut reg = GatewayRegistry::new();
        let err = reg.register_raw("GetLeases", Raw).unwrap_err();
        assert_eq!(err, RegistryError::CatalogueName(GetLeases::NAME.into()));
        assert!(err.to_string().contains("Registry::method::<GetLeases>"));
        // Not even on the other side: a raw FindVPSByLease on the gateway
        // would skip its types just the same.
        assert!(reg.register_raw("FindVPSByLease", Raw).is_err());
        reg.register_raw("PythonOnly", Raw).unwrap();
        assert_eq!(
            reg.register_raw("", Raw).unwrap_err(),
            RegistryError::BadName(0)
        );
        assert_eq!(reg.into_handlers().methods(), ["PythonOnly"]);
    }
}
