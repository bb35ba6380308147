//! Method name to handler.

use std::collections::HashMap;
use std::sync::Arc;

use gatemesh_proto::Method;

use crate::typed::{MethodHandler, Typed};
use crate::{MAX_METHOD_NAME_LEN, RequestHandler};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("method {0:?} is already registered")]
    Duplicate(String),
    #[error("method name must be 1 to {MAX_METHOD_NAME_LEN} bytes, got {0} bytes")]
    BadName(usize),
}

/// The handlers one end serves, by method name. Built at start-up, then
/// shared read-only.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<Arc<str>, Arc<dyn RequestHandler>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `M` with a typed handler: `registry.method::<FindVpsByLease>(handler)?`.
    pub fn method<M: Method>(
        &mut self,
        handler: impl MethodHandler<M>,
    ) -> Result<&mut Self, RegistryError> {
        self.register(M::NAME, Typed::<M, _>::new(handler))
    }

    /// Serves `name` with a handler on raw bytes.
    pub fn register(
        &mut self,
        name: &str,
        handler: impl RequestHandler,
    ) -> Result<&mut Self, RegistryError> {
        if name.is_empty() || name.len() > MAX_METHOD_NAME_LEN {
            return Err(RegistryError::BadName(name.len()));
        }
        if self.handlers.contains_key(name) {
            return Err(RegistryError::Duplicate(name.to_string()));
        }
        self.handlers.insert(name.into(), Arc::new(handler));
        Ok(self)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn RequestHandler>> {
        self.handlers.get(name)
    }

    /// The served method names, sorted (they go into hello and welcome).
    pub fn methods(&self) -> Vec<String> {
        let mut names: Vec<String> = self.handlers.keys().map(|k| k.to_string()).collect();
        names.sort();
        names
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("methods", &self.methods())
            .finish()
    }
}
