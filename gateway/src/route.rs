//! How one call is routed: its [`Strategy`] and the filters, deadline and
//! metadata that travel with it ([`Route`]).

use std::time::Duration;

use crate::credentials::Scope;

/// How a call picks its instances and its answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Strategy {
    /// Every serving instance; the first valid answer wins.
    #[default]
    FirstValid,
    /// Every serving instance; every instance's outcome.
    All,
    /// One instance, the least busy; retried elsewhere if it vanishes.
    One,
}

impl Strategy {
    /// Its metric label and log spelling.
    pub fn label(self) -> &'static str {
        match self {
            Self::FirstValid => "first_valid",
            Self::All => "all",
            Self::One => "one",
        }
    }
}

/// A strategy plus the filters and deadline of one call.
#[derive(Debug, Clone, Default)]
pub struct Route {
    pub strategy: Strategy,
    /// Only this instance.
    pub instance: Option<String>,
    /// Only instances with this environment label.
    pub environment: Option<String>,
    /// The environments the caller may reach (a confined caller of the
    /// admin API): without a filter, only their instances are asked;
    /// naming another environment, or an instance of one, is refused
    /// ([`CallError::OutsideScope`](crate::CallError::OutsideScope),
    /// [`CallError::InstanceOutsideScope`](crate::CallError::InstanceOutsideScope)).
    pub within: Scope,
    /// The call's deadline; the gateway's default when `None`.
    pub timeout: Option<Duration>,
    /// Sent with every request of the call.
    pub metadata: gatemesh_handlers::Metadata,
}
