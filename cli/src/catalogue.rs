//! Mesh methods by name, from the descriptors compiled into `gatemesh-proto`,
//! and the JSON <-> protobuf conversion of their messages.

use anyhow::{Context as _, anyhow, bail};
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MethodDescriptor, SerializeOptions,
};

/// The services in `methods.proto` that list mesh methods, and who serves each.
const SERVICES: &[(&str, &str)] = &[
    ("gatemesh.v1.InstanceMethods", "instances"),
    ("gatemesh.v1.GatewayMethods", "gateway"),
];

/// Every mesh method this build knows.
#[derive(Debug, Clone)]
pub struct Catalogue {
    methods: Vec<CatalogueMethod>,
}

/// One mesh method: its name on the wire and its message types.
#[derive(Debug, Clone)]
pub struct CatalogueMethod {
    descriptor: MethodDescriptor,
    served_by: &'static str,
}

impl Catalogue {
    /// Reads [`gatemesh_proto::DESCRIPTOR_SET`].
    pub fn load() -> anyhow::Result<Self> {
        let pool = DescriptorPool::decode(gatemesh_proto::DESCRIPTOR_SET)
            .context("the descriptors compiled into this build are invalid")?;
        let mut methods = Vec::new();
        for (service, served_by) in SERVICES {
            let service = pool
                .get_service_by_name(service)
                .with_context(|| format!("service {service} is missing from the descriptors"))?;
            methods.extend(service.methods().map(|descriptor| CatalogueMethod {
                descriptor,
                served_by,
            }));
        }
        methods.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(Self { methods })
    }

    pub fn methods(&self) -> &[CatalogueMethod] {
        &self.methods
    }

    /// The method called `name` (its rpc name, exactly).
    pub fn method(&self, name: &str) -> anyhow::Result<CatalogueMethod> {
        if let Some(method) = self.methods.iter().find(|m| m.name() == name) {
            return Ok(method.clone());
        }
        let known = self
            .methods
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", ");
        match self
            .methods
            .iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
        {
            Some(close) => Err(anyhow!(
                "unknown method {name:?} (did you mean {:?}?); known methods: {known}",
                close.name()
            )),
            None => Err(anyhow!("unknown method {name:?}; known methods: {known}")),
        }
    }
}

impl CatalogueMethod {
    /// The name on the wire: the rpc name.
    pub fn name(&self) -> &str {
        self.descriptor.name()
    }

    pub fn input_name(&self) -> String {
        self.descriptor.input().full_name().to_string()
    }

    pub fn output_name(&self) -> String {
        self.descriptor.output().full_name().to_string()
    }

    /// `instances` or `gateway`.
    pub fn served_by(&self) -> &'static str {
        self.served_by
    }

    /// Encodes a JSON request (proto3 JSON mapping; field names as in the
    /// `.proto` or in lowerCamelCase) as the method's request message.
    /// Fields the message does not have are refused.
    pub fn encode_json(&self, json: &str) -> anyhow::Result<Vec<u8>> {
        let input = self.descriptor.input();
        let mut deserializer = serde_json::Deserializer::from_str(json);
        let options = DeserializeOptions::new().deny_unknown_fields(true);
        let message =
            DynamicMessage::deserialize_with_options(input.clone(), &mut deserializer, &options)
                .and_then(|m| deserializer.end().map(|()| m))
                .map_err(|e| {
                    let fields: Vec<String> =
                        input.fields().map(|f| f.name().to_string()).collect();
                    anyhow!(
                        "invalid JSON for {} (the request of {}): {e}; its fields are: {}",
                        input.full_name(),
                        self.name(),
                        fields.join(", ")
                    )
                })?;
        Ok(message.encode_to_vec())
    }

    /// Decodes an answer as the method's response message, as JSON with
    /// every field shown (an empty field says something, e.g. "not mine").
    pub fn decode_json(&self, payload: &[u8]) -> anyhow::Result<serde_json::Value> {
        let output = self.descriptor.output();
        let message = DynamicMessage::decode(output.clone(), payload)
            .with_context(|| format!("the answer is not a valid {}", output.full_name()))?;
        let options = SerializeOptions::new()
            .skip_default_fields(false)
            .use_proto_field_name(true)
            .stringify_64_bit_integers(false);
        match message.serialize_with_options(serde_json::value::Serializer, &options) {
            Ok(value) => Ok(value),
            Err(e) => bail!("cannot show {} as JSON: {e}", output.full_name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatemesh_proto::pb;

    #[test]
    fn every_catalogue_method_is_found_by_its_wire_name() {
        let catalogue = Catalogue::load().unwrap();
        for known in gatemesh_proto::methods::KNOWN {
            assert_eq!(catalogue.method(known.name).unwrap().name(), known.name);
        }
    }

    #[test]
    fn json_round_trips_through_the_generated_types() {
        let method = Catalogue::load().unwrap().method("FindVPSByLease").unwrap();
        let bytes = method
            .encode_json(r#"{"ip":"10.0.0.5","mac":"52:54:00:12:34:56"}"#)
            .unwrap();
        let request = pb::FindVpsByLeaseRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            (request.ip.as_str(), request.mac.as_str()),
            ("10.0.0.5", "52:54:00:12:34:56")
        );
        let answer = pb::FindVpsByLeaseResponse {
            vps_id: "vps-1".into(),
            organization_id: String::new(),
        };
        assert_eq!(
            method.decode_json(&answer.encode_to_vec()).unwrap(),
            serde_json::json!({"vps_id": "vps-1", "organization_id": ""})
        );
    }

    #[test]
    fn unknown_methods_and_fields_and_bad_json_are_named() {
        let catalogue = Catalogue::load().unwrap();
        let e = catalogue.method("FindVpsByLeas").unwrap_err().to_string();
        assert!(e.contains("unknown method \"FindVpsByLeas\""), "{e}");
        assert!(e.contains("methods: AllocateIP, FindVPSByLease, "), "{e}");
        assert!(e.contains("GetGatewayInfo"), "{e}");
        let e = catalogue.method("findvpsbylease").unwrap_err().to_string();
        assert!(e.contains("did you mean \"FindVPSByLease\""), "{e}");

        let method = catalogue.method("FindVPSByLease").unwrap();
        let e = method
            .encode_json(r#"{"ipp":"1"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unrecognized field name 'ipp'"), "{e}");
        assert!(e.ends_with("its fields are: ip, mac"), "{e}");
        let e = method.encode_json(r#"{"ip":"1""#).unwrap_err().to_string();
        assert!(
            e.contains("invalid JSON for gatemesh.v1.FindVPSByLeaseRequest"),
            "{e}"
        );
        let e = method.encode_json(r#"{"ip":5}"#).unwrap_err().to_string();
        assert!(e.contains("invalid JSON"), "{e}");
        let e = method
            .encode_json(r#"{} trailing"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("trailing"), "{e}");
    }
}
