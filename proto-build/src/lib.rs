//! Generates gatemesh method bindings from `.proto` files, in a crate's
//! `build.rs`, the way `tonic-prost-build` generates messages and stubs:
//! pure Rust (protox), no system `protoc`.
//!
//! A service whose `(gatemesh.v1.served_by)` option names a side is a list
//! of mesh methods: every rpc of it becomes a type implementing
//! `gatemesh_proto::Method` (its wire name, request and response types,
//! side, and what its options in `gatemesh/v1/options.proto` declare:
//! `valid_if_nonempty`, `idempotent`), the marker of its side
//! (`InstanceMethod` or `GatewayMethod`), and an entry in the crate's
//! `KNOWN` catalogue. The same run writes the messages (prost), tonic
//! clients for every service, and the encoded descriptors (`DESCRIPTOR_SET`,
//! for a gateway's reflection and JSON tools). `gatemesh/v1/options.proto`
//! is built in: a proto imports it without having the file.
//!
//! ```ignore
//! // build.rs
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     gatemesh_build::configure().include("proto").compile(&["hello/v1/hello.proto"])
//! }
//! // lib.rs
//! pub mod pb { tonic::include_proto!("hello.v1"); }
//! pub mod methods { gatemesh_proto::include_methods!(); }
//! ```
//!
//! A mistake (an option naming a field that does not exist, a streaming
//! rpc, a name declared twice) stops the build with a message naming the
//! rpc. `gatemesh-proto` builds its own `methods.proto` with this crate.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use heck::{ToSnakeCase, ToUpperCamelCase};
use prost_reflect::{DescriptorPool, Kind, MethodDescriptor, ServiceDescriptor, Value};
use protox::file::{
    ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
};

/// The import name of gatemesh's options, served from memory when no
/// include directory has it.
pub const OPTIONS_PROTO: &str = "gatemesh/v1/options.proto";
/// Its text, the same file `gatemesh-proto` compiles.
const OPTIONS_SOURCE: &str = include_str!("../../proto/proto/gatemesh/v1/options.proto");
/// The package of gatemesh's own types; a crate that does not compile it
/// refers to `gatemesh_proto::pb` for them.
const GATEMESH_PACKAGE: &str = "gatemesh.v1";
/// Same limit as `gatemesh_handlers::MAX_METHOD_NAME_LEN`, checked early.
const MAX_METHOD_NAME_LEN: usize = 128;
/// The file of the generated bindings in `OUT_DIR`, for `include_methods!`.
pub const METHODS_FILE: &str = "gatemesh_methods.rs";
/// The encoded descriptors in `OUT_DIR`.
pub const DESCRIPTOR_FILE: &str = "gatemesh_descriptor.bin";

type Error = Box<dyn std::error::Error>;

/// Starts a build with the defaults: messages in `super::pb`, output in
/// `OUT_DIR`.
pub fn configure() -> Builder {
    Builder {
        includes: Vec::new(),
        messages_path: "super::pb".into(),
        out_dir: None,
        codec_path: "::gatemesh_proto::codec::ProstCodec".into(),
        servers: false,
    }
}

/// What [`configure`] sets up; finish with [`Builder::compile`].
#[derive(Debug, Clone)]
pub struct Builder {
    includes: Vec<PathBuf>,
    messages_path: String,
    out_dir: Option<PathBuf>,
    codec_path: String,
    servers: bool,
}

impl Builder {
    /// A directory imports and the files to compile are found in (like
    /// `protoc -I`); several may be given.
    pub fn include(mut self, dir: impl AsRef<Path>) -> Self {
        self.includes.push(dir.as_ref().to_path_buf());
        self
    }

    /// Where the bindings find the messages, as a Rust path from the
    /// module that includes them; default `super::pb` (a `pb` module beside
    /// the `methods` module).
    pub fn messages_path(mut self, path: impl Into<String>) -> Self {
        self.messages_path = path.into();
        self
    }

    /// Where the files go; default `OUT_DIR`.
    pub fn out_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.out_dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// The tonic codec of the generated clients; default gatemesh's
    /// (`gatemesh_proto::codec::ProstCodec`), so a crate needs no more
    /// than `gatemesh-proto`, `prost` and `tonic`.
    pub fn codec_path(mut self, path: impl Into<String>) -> Self {
        self.codec_path = path.into();
        self
    }

    /// Also generate tonic server traits (off by default: a gateway serves
    /// mesh methods itself, and instances serve them over the stream).
    pub fn build_server(mut self, enable: bool) -> Self {
        self.servers = enable;
        self
    }

    /// Compiles `files` (names under an include directory) and writes the
    /// messages, the clients, the bindings and the descriptors.
    pub fn compile(self, files: &[impl AsRef<Path>]) -> Result<(), Error> {
        let mut resolver = ChainFileResolver::new();
        for dir in &self.includes {
            resolver.add(IncludeFileResolver::new(dir.clone()));
        }
        resolver.add(BuiltIn);
        resolver.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler.include_imports(true).include_source_info(true);
        for file in files {
            compiler.open_file(file.as_ref())?;
        }
        for file in compiler.files() {
            if let Some(path) = file.path() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
        let out = match &self.out_dir {
            Some(dir) => dir.clone(),
            None => PathBuf::from(std::env::var("OUT_DIR")?),
        };
        // Encoded by protox itself so that the method options survive.
        std::fs::write(
            out.join(DESCRIPTOR_FILE),
            compiler.encode_file_descriptor_set(),
        )?;
        let own: Vec<String> = compiler
            .files()
            .filter(|f| !f.is_import())
            .map(|f| f.name().to_string())
            .collect();
        let bindings = bindings(&compiler.descriptor_pool(), &own, &self.messages_path)?;
        std::fs::write(out.join(METHODS_FILE), bindings)?;

        // Rust code only for the files named: imports (descriptor.proto,
        // gatemesh's options) are other crates' business.
        let mut fds = compiler.file_descriptor_set();
        fds.file.retain(|f| own.iter().any(|n| n == f.name()));
        let mut tonic = tonic_prost_build::configure()
            .bytes(".")
            .build_server(self.servers)
            .out_dir(&out);
        if !fds.file.iter().any(|f| f.package() == GATEMESH_PACKAGE) {
            tonic = tonic.extern_path(format!(".{GATEMESH_PACKAGE}"), "::gatemesh_proto::pb");
        }
        tonic.codec_path(&self.codec_path).compile_fds(fds)?;
        Ok(())
    }
}

/// Serves `gatemesh/v1/options.proto` to a crate that does not have it.
struct BuiltIn;

impl FileResolver for BuiltIn {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        if name == OPTIONS_PROTO {
            return File::from_source(name, OPTIONS_SOURCE);
        }
        Err(protox::Error::file_not_found(name))
    }
}

/// Which side serves a catalogue service: its `served_by` option.
#[derive(Clone, Copy)]
enum Side {
    Instance,
    Gateway,
}

/// The Rust source of every catalogue method's binding, `KNOWN`,
/// `DESCRIPTOR_SET` and `SET`, for the services of the files in `own`.
fn bindings(pool: &DescriptorPool, own: &[String], messages: &str) -> Result<String, String> {
    let option = |name: &str| {
        pool.get_extension_by_name(name)
            .ok_or_else(|| format!("option {name} is missing from {OPTIONS_PROTO}"))
    };
    let served_by = option("gatemesh.v1.served_by")?;
    let valid_ext = option("gatemesh.v1.valid_if_nonempty")?;
    let idempotent_ext = option("gatemesh.v1.idempotent")?;
    let mut code = String::from(
        "// @generated by gatemesh-build.\n\
         #[allow(unused_imports)]\n\
         use ::gatemesh_proto::methods::{GatewayMethod, GatewaySide, InstanceMethod, \
         InstanceSide, KnownMethod, Method, MethodSet, ServedBy, Side};\n\
         use ::gatemesh_proto::methods::__private::Generated;\n\n",
    );
    let mut known = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let services = pool
        .services()
        .filter(|s| own.iter().any(|f| f == s.parent_file().name()));
    for service in services {
        let side = match service.options().get_extension(&served_by).as_ref() {
            Value::EnumNumber(1) => Side::Instance,
            Value::EnumNumber(2) => Side::Gateway,
            Value::EnumNumber(0) => continue,
            other => {
                return Err(format!(
                    "service {}: served_by is not a known side: {other:?}",
                    service.full_name()
                ));
            }
        };
        for method in service.methods() {
            let name = method.name().to_string();
            let fail = |why: String| format!("{}: rpc {name}: {why}", method.parent_file().name());
            if seen.contains(&name) {
                return Err(fail(
                    "declared twice: a method name is one method, served by one side".into(),
                ));
            }
            seen.push(name.clone());
            code.push_str(&binding(
                &service,
                &method,
                side,
                messages,
                &valid_ext,
                &idempotent_ext,
            )?);
            known.push(format!("    KnownMethod::of::<{}>(),", rust_ident(&name)));
        }
    }
    writeln!(
        code,
        "/// Every mesh method of this crate's protos, in declaration order.\n\
         pub const KNOWN: &[KnownMethod] = &[\n{}\n];\n\
         /// The encoded descriptors of this crate's protos and their imports.\n\
         pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{DESCRIPTOR_FILE}\"));\n\
         /// The methods and their descriptors, for a gateway to serve them\n\
         /// (`Gateway::builder(..).methods(SET)`) and for tools.\n\
         pub const SET: MethodSet = MethodSet {{ descriptor_set: DESCRIPTOR_SET, methods: KNOWN }};",
        known.join("\n")
    )
    .unwrap();
    Ok(code)
}

/// One rpc's type and its trait impls.
fn binding(
    service: &ServiceDescriptor,
    method: &MethodDescriptor,
    side: Side,
    messages: &str,
    valid_ext: &prost_reflect::ExtensionDescriptor,
    idempotent_ext: &prost_reflect::ExtensionDescriptor,
) -> Result<String, String> {
    let name = method.name();
    let fail = |why: String| format!("{}: rpc {name}: {why}", method.parent_file().name());
    if name.len() > MAX_METHOD_NAME_LEN {
        return Err(fail(format!("longer than {MAX_METHOD_NAME_LEN} bytes")));
    }
    let proto = method.method_descriptor_proto();
    if proto.client_streaming() || proto.server_streaming() {
        return Err(fail("mesh methods are unary: remove `stream`".into()));
    }
    let rust = rust_ident(name);
    let request = message_path(service, method, true, messages).map_err(fail)?;
    let response = message_path(service, method, false, messages).map_err(fail)?;
    let options = method.options();
    let idempotent = match options.get_extension(idempotent_ext).as_ref() {
        Value::Bool(b) => *b,
        other => return Err(fail(format!("idempotent is not a bool: {other:?}"))),
    };
    let valid_field = match options.get_extension(valid_ext).as_ref() {
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(valid_field(method, s).map_err(fail)?),
        other => {
            return Err(fail(format!(
                "valid_if_nonempty is not a string: {other:?}"
            )));
        }
    };
    let (side_variant, side_type, direction, served) = match side {
        Side::Instance => (
            "Instance",
            "InstanceSide",
            "InstanceMethod",
            "served by instances; the gateway calls it",
        ),
        Side::Gateway => (
            "Gateway",
            "GatewaySide",
            "GatewayMethod",
            "served by the gateway; instances call it",
        ),
    };
    let mut code = String::new();
    for line in leading_comments(method).lines() {
        writeln!(code, "///{line}").unwrap();
    }
    let validity = match &valid_field {
        Some(field) => format!("An answer is valid when `{field}` is non-empty."),
        None => "Every answer is valid.".to_string(),
    };
    let retry = if idempotent {
        "Idempotent: may be sent again."
    } else {
        "Not idempotent: never sent twice."
    };
    let service_name = service.full_name();
    writeln!(
        code,
        "///\n/// `{name}` (`{service_name}`), {served}. {validity} {retry}\n\
         #[derive(Debug, Clone, Copy, Default)]\n\
         pub struct {rust};\n\
         #[diagnostic::do_not_recommend]\n\
         impl Generated for {rust} {{}}\n\
         impl Method for {rust} {{\n    \
             const NAME: &'static str = {name:?};\n    \
             const SERVICE: &'static str = {service_name:?};\n    \
             const IDEMPOTENT: bool = {idempotent};\n    \
             const SERVED_BY: Side = Side::{side_variant};\n    \
             type Request = {request};\n    \
             type Response = {response};"
    )
    .unwrap();
    if let Some(field) = &valid_field {
        writeln!(
            code,
            "    fn is_valid(response: &Self::Response) -> bool {{\n        \
                 !response.{field}.is_empty()\n    }}"
        )
        .unwrap();
    }
    writeln!(
        code,
        // Left out of "other types implement" hints, so that a compiler
        // message does not change with every new method.
        "}}\n#[diagnostic::do_not_recommend]\nimpl ServedBy<{side_type}> for {rust} {{}}\n\
         #[diagnostic::do_not_recommend]\nimpl {direction} for {rust} {{}}\n"
    )
    .unwrap();
    Ok(code)
}

/// prost's name for a message, as a path from the bindings' module.
fn message_path(
    service: &ServiceDescriptor,
    method: &MethodDescriptor,
    input: bool,
    messages: &str,
) -> Result<String, String> {
    let message = if input {
        method.input()
    } else {
        method.output()
    };
    let package = service.package_name();
    if message.package_name() != package || message.parent_message().is_some() {
        return Err(format!(
            "{} must be a top-level message of package {package}, the service's",
            message.full_name()
        ));
    }
    Ok(format!("{messages}::{}", rust_ident(message.name())))
}

/// prost's Rust name of a proto type name (`FindVPSByLease` ->
/// `FindVpsByLease`); a keyword gets prost's `_` suffix.
fn rust_ident(name: &str) -> String {
    let ident = name.to_upper_camel_case();
    if ident == "Self" {
        return "Self_".into();
    }
    ident
}

/// The Rust field that `valid_if_nonempty` names, checked: it exists and
/// has an `is_empty`.
fn valid_field(method: &MethodDescriptor, field: &str) -> Result<String, String> {
    let output = method.output();
    let Some(f) = output.get_field_by_name(field) else {
        let fields: Vec<String> = output.fields().map(|f| f.name().to_string()).collect();
        return Err(format!(
            "valid_if_nonempty names {field:?}, which {} does not have (its fields: {})",
            output.full_name(),
            fields.join(", ")
        ));
    };
    // A field with presence (proto3 `optional`, a oneof member) is an
    // `Option` in prost: no `is_empty` to call.
    let can_be_empty = f.is_list()
        || f.is_map()
        || (!f.supports_presence() && matches!(f.kind(), Kind::String | Kind::Bytes));
    if !can_be_empty {
        return Err(format!(
            "valid_if_nonempty names {field:?}, which is not a string, bytes, repeated or \
             map field"
        ));
    }
    let rust = f.name().to_snake_case();
    if keyword(&rust) {
        return Ok(format!("r#{rust}"));
    }
    Ok(rust)
}

fn keyword(ident: &str) -> bool {
    matches!(
        ident,
        "as" | "break"
            | "const"
            | "continue"
            | "crate"
            | "else"
            | "enum"
            | "extern"
            | "false"
            | "fn"
            | "for"
            | "if"
            | "impl"
            | "in"
            | "let"
            | "loop"
            | "match"
            | "mod"
            | "move"
            | "mut"
            | "pub"
            | "ref"
            | "return"
            | "static"
            | "struct"
            | "trait"
            | "true"
            | "type"
            | "unsafe"
            | "use"
            | "where"
            | "while"
            | "async"
            | "await"
            | "dyn"
            | "gen"
            | "try"
            | "abstract"
            | "become"
            | "box"
            | "do"
            | "final"
            | "macro"
            | "override"
            | "priv"
            | "typeof"
            | "unsized"
            | "virtual"
            | "yield"
    )
}

/// The comment above the rpc, for the type's docs.
fn leading_comments(method: &MethodDescriptor) -> String {
    let file = method.parent_file();
    let path = method.path();
    file.file_descriptor_proto()
        .source_code_info
        .as_ref()
        .and_then(|info| info.location.iter().find(|l| l.path == path))
        .and_then(|l| l.leading_comments.clone())
        .unwrap_or_default()
        .trim_end()
        .to_string()
}
