//! Mesh methods: a name bound to its request and response types.
//!
//! Adding a method means declaring its messages and rpc in
//! `proto/gatemesh/v1/methods.proto` and one `method!` line here.

use crate::pb;

/// A method carried over the stream, bound at compile time to its types.
pub trait Method: Send + Sync + 'static {
    /// The name on the wire: the rpc name in `methods.proto`.
    const NAME: &'static str;
    type Request: prost::Message + Default + Clone + Send + Sync + 'static;
    type Response: prost::Message + Default + Send + Sync + 'static;

    /// Whether an answer counts for `first_valid`. An answer that is not
    /// valid means "not mine": another instance may still hold the answer.
    fn is_valid(_response: &Self::Response) -> bool {
        true
    }

    /// Whether running the method twice does no harm, so a call whose
    /// instance vanished after the request was sent may be sent again.
    /// `false` by default: a call is never run twice.
    const IDEMPOTENT: bool = false;
}

macro_rules! method {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $req:ty => $resp:ty $(, valid($r:ident) $valid:expr)? $(, idempotent = $idem:literal)?) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $ty;

        impl Method for $ty {
            const NAME: &'static str = $name;
            type Request = $req;
            type Response = $resp;
            $(
                fn is_valid($r: &Self::Response) -> bool {
                    $valid
                }
            )?
            $(const IDEMPOTENT: bool = $idem;)?
        }
    };
}

method!(
    /// Served by instances: which VPS holds this DHCP lease.
    FindVpsByLease, "FindVPSByLease",
    pb::FindVpsByLeaseRequest => pb::FindVpsByLeaseResponse,
    valid(r) !r.vps_id.is_empty(),
    idempotent = true
);

method!(
    /// Served by the gateway: who it is and how many instances it holds.
    GetGatewayInfo, "GetGatewayInfo",
    pb::GetGatewayInfoRequest => pb::GetGatewayInfoResponse,
    idempotent = true
);

method!(
    /// Served by the gateway: the DHCP manager's leases and their VPS ids.
    GetLeases, "GetLeases",
    pb::GetLeasesRequest => pb::GetLeasesResponse,
    idempotent = true
);

/// What the gateway knows about a method when only its name is given (the
/// external call API): how to tell a valid answer from "not mine".
#[derive(Debug, Clone, Copy)]
pub struct KnownMethod {
    pub name: &'static str,
    /// Decodes an encoded response and applies [`Method::is_valid`]; an
    /// undecodable answer is not valid.
    pub is_valid: fn(&[u8]) -> bool,
    /// [`Method::IDEMPOTENT`].
    pub idempotent: bool,
}

fn valid_bytes<M: Method>(payload: &[u8]) -> bool {
    <M::Response as prost::Message>::decode(payload).is_ok_and(|r| M::is_valid(&r))
}

const fn known<M: Method>() -> KnownMethod {
    KnownMethod {
        name: M::NAME,
        is_valid: valid_bytes::<M>,
        idempotent: M::IDEMPOTENT,
    }
}

/// Every method declared above.
pub const KNOWN: &[KnownMethod] = &[
    known::<FindVpsByLease>(),
    known::<GetGatewayInfo>(),
    known::<GetLeases>(),
];

/// Looks a method up by its wire name.
pub fn known_method(name: &str) -> Option<&'static KnownMethod> {
    KNOWN.iter().find(|m| m.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn find_vps_by_lease_validity_is_a_non_empty_vps_id() {
        let found = pb::FindVpsByLeaseResponse {
            vps_id: "vps-1".into(),
            organization_id: "org".into(),
        };
        assert!(FindVpsByLease::is_valid(&found));
        assert!(!FindVpsByLease::is_valid(&Default::default()));
        let known = known_method("FindVPSByLease").unwrap();
        assert!((known.is_valid)(&found.encode_to_vec()));
        assert!(!(known.is_valid)(&[]));
        assert!(!(known.is_valid)(&[0xff, 0xff]), "garbage is never valid");
    }

    /// The catalogue in `methods.proto` and the bindings here must agree, or
    /// the CLI would encode one type and the handler decode another.
    #[test]
    fn every_rpc_in_the_catalogue_is_bound_with_the_same_types() {
        use prost::Message as _;
        let fds = prost_types_fds();
        let mut catalogue = Vec::new();
        for file in &fds.file {
            for service in &file.service {
                if service.name() == "InstanceMethods" || service.name() == "GatewayMethods" {
                    for m in &service.method {
                        catalogue.push((
                            m.name().to_string(),
                            m.input_type().rsplit('.').next().unwrap().to_string(),
                            m.output_type().rsplit('.').next().unwrap().to_string(),
                        ));
                    }
                }
            }
        }
        catalogue.sort();
        let mut bound: Vec<_> = KNOWN.iter().map(|m| m.name.to_string()).collect();
        bound.sort();
        let names: Vec<_> = catalogue.iter().map(|c| c.0.clone()).collect();
        assert_eq!(names, bound);
        fn type_name<T>() -> &'static str {
            std::any::type_name::<T>().rsplit("::").next().unwrap()
        }
        let types = [
            (
                FindVpsByLease::NAME,
                type_name::<<FindVpsByLease as Method>::Request>(),
                type_name::<<FindVpsByLease as Method>::Response>(),
            ),
            (
                GetGatewayInfo::NAME,
                type_name::<<GetGatewayInfo as Method>::Request>(),
                type_name::<<GetGatewayInfo as Method>::Response>(),
            ),
            (
                GetLeases::NAME,
                type_name::<<GetLeases as Method>::Request>(),
                type_name::<<GetLeases as Method>::Response>(),
            ),
        ];
        for (name, req, resp) in types {
            let (_, input, output) = catalogue.iter().find(|c| c.0 == name).unwrap();
            // prost renames VPS to Vps; compare case-insensitively.
            assert_eq!(input.to_lowercase(), req.to_lowercase(), "{name} request");
            assert_eq!(
                output.to_lowercase(),
                resp.to_lowercase(),
                "{name} response"
            );
        }
        let _ = pb::Hello::default().encoded_len();
    }

    fn prost_types_fds() -> prost_types::FileDescriptorSet {
        prost_types::FileDescriptorSet::decode(crate::DESCRIPTOR_SET).unwrap()
    }
}
