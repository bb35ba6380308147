//! JSON lines for `jq` and log shippers: one object per event, every value
//! typed (numbers as numbers, lists as arrays, text as strings), every key
//! once.
//!
//! The event's own fields come first; the fields of the spans it happened
//! in follow, innermost first, each key only where no nearer one has it.
//! So a call's `trace_id` and `span_id`, recorded on its spans, are
//! top-level keys of every line logged inside it. `otel.*` fields are the
//! exporter's instructions (span kind, status) and are left out.
//!
//! A value recorded with `?` (`Debug`) is kept as an array when its text is
//! a JSON array ([`list`] makes one), as a string otherwise.

use std::fmt;
use std::io::Write as _;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The JSON line layer, writing to what `writer` makes.
pub struct JsonLayer<W> {
    writer: W,
}

impl<W> JsonLayer<W> {
    pub fn new(writer: W) -> Self {
        Self { writer }
    }
}

/// Typed field values, in the order first recorded.
#[derive(Debug, Default)]
struct Fields(Vec<(&'static str, Value)>);

impl Fields {
    fn set(&mut self, name: &'static str, value: Value) {
        if name.starts_with("otel.") {
            return;
        }
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let value = serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number);
        self.set(field.name(), value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field.name(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field.name(), value.into());
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        let value = i64::try_from(value).map_or_else(|_| value.to_string().into(), Value::from);
        self.set(field.name(), value);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        let value = u64::try_from(value).map_or_else(|_| value.to_string().into(), Value::from);
        self.set(field.name(), value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field.name(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field.name(), value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.set(field.name(), crate::error_chain(value).into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        let value = if text.starts_with('[') {
            match serde_json::from_str::<Value>(&text) {
                Ok(array @ Value::Array(_)) => array,
                _ => Value::String(text),
            }
        } else {
            Value::String(text)
        };
        self.set(field.name(), value);
    }
}

impl<S, W> Layer<S> for JsonLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        span.extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        if let Some(fields) = extensions.get_mut::<Fields>() {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let metadata = event.metadata();
        let mut line = String::with_capacity(256);
        line.push_str("{\"timestamp\":\"");
        // Writing to a String cannot fail.
        let _ = SystemTime.format_time(&mut Writer::new(&mut line));
        line.push_str("\",\"level\":");
        push_json(&mut line, &Value::from(metadata.level().as_str()));
        line.push_str(",\"target\":");
        push_json(&mut line, &Value::from(metadata.target()));
        let mut keys: Vec<&str> = vec!["timestamp", "level", "target"];
        if let Some(leaf) = ctx.event_span(event) {
            line.push_str(",\"span\":");
            push_json(&mut line, &Value::from(leaf.name()));
            keys.push("span");
        }
        if let Some(message) = fields.get("message") {
            line.push_str(",\"message\":");
            push_json(&mut line, message);
            keys.push("message");
        }
        for (name, value) in &fields.0 {
            push_field(&mut line, &mut keys, name, value);
        }
        for span in ctx.event_scope(event).into_iter().flatten() {
            let extensions = span.extensions();
            if let Some(span_fields) = extensions.get::<Fields>() {
                for (name, value) in &span_fields.0 {
                    push_field(&mut line, &mut keys, name, value);
                }
            }
        }
        line.push_str("}\n");
        let _ = self.writer.make_writer().write_all(line.as_bytes());
    }
}

/// `,"name":value` unless `name` is already on the line.
fn push_field<'a>(line: &mut String, keys: &mut Vec<&'a str>, name: &'a str, value: &Value) {
    if keys.contains(&name) {
        return;
    }
    keys.push(name);
    line.push(',');
    push_json(line, &Value::from(name));
    line.push(':');
    push_json(line, value);
}

fn push_json(line: &mut String, value: &Value) {
    // A Value always serialises.
    line.push_str(&value.to_string());
}

/// A list logged as a JSON array (`methods = ?list(&names)`): an array in
/// JSON lines, `["a","b"]` in text.
pub fn list<I>(items: I) -> List
where
    I: IntoIterator,
    I::Item: fmt::Display,
{
    List(items.into_iter().map(|item| item.to_string()).collect())
}

/// See [`list`].
pub struct List(Vec<String>);

impl fmt::Debug for List {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&Value::from(self.0.clone()).to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    fn logged(f: impl FnOnce()) -> Vec<serde_json::Map<String, Value>> {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::registry().with(JsonLayer::new(lines.clone()));
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| match serde_json::from_str(line) {
                Ok(Value::Object(map)) => map,
                _ => panic!("not a JSON object: {line}"),
            })
            .collect()
    }

    #[test]
    fn values_are_typed_and_every_key_is_written_once() {
        let lines = logged(|| {
            let outer = tracing::info_span!(
                "gatemesh.admin",
                otel.kind = "server",
                method = "FindVPSByLease",
                trace_id = tracing::field::Empty
            );
            outer.record("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736");
            let _outer = outer.enter();
            let inner = tracing::info_span!("gatemesh.call", method = "inner", strategy = "all");
            let _inner = inner.enter();
            let fd_limit: Option<u64> = Some(20000);
            let missing: Option<u64> = None;
            tracing::warn!(
                fd_limit,
                missing,
                ok = true,
                ratio = 0.5,
                delta = -3i64,
                methods = ?list(["Ping", "FindVPSByLease"]),
                error = %"no instance serves Ping",
                "call failed"
            );
        });
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "call failed");
        assert_eq!(line["span"], "gatemesh.call");
        assert_eq!(line["fd_limit"], 20000);
        assert!(!line.contains_key("missing"));
        assert_eq!(line["ok"], true);
        assert_eq!(line["ratio"], 0.5);
        assert_eq!(line["delta"], -3);
        assert_eq!(
            line["methods"],
            serde_json::json!(["Ping", "FindVPSByLease"])
        );
        assert_eq!(line["error"], "no instance serves Ping");
        // The innermost span's value wins; the outer span's fields are
        // top-level too; the exporter's `otel.*` are not logged.
        assert_eq!(line["method"], "inner");
        assert_eq!(line["strategy"], "all");
        assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(line.keys().all(|k| !k.starts_with("otel.")), "{line:?}");
    }

    #[test]
    fn a_list_is_an_array_in_json_and_readable_in_text() {
        assert_eq!(format!("{:?}", list(["a\"b", "c"])), r#"["a\"b","c"]"#);
        assert_eq!(format!("{:?}", list(Vec::<String>::new())), "[]");
    }
}
