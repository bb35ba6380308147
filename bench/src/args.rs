//! `--key value` and `--flag` arguments, enough for a bench.

use std::collections::HashMap;
use std::str::FromStr;

use anyhow::{Context as _, bail};

#[derive(Debug, Default)]
pub struct Args {
    values: HashMap<String, String>,
    flags: Vec<String>,
}

impl Args {
    /// `flags` are the names that take no value.
    pub fn parse(args: impl IntoIterator<Item = String>, flags: &[&str]) -> anyhow::Result<Self> {
        let mut parsed = Self::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let Some(name) = arg.strip_prefix("--") else {
                bail!("unexpected argument {arg:?}");
            };
            if flags.contains(&name) {
                parsed.flags.push(name.to_string());
            } else {
                let value = args
                    .next()
                    .with_context(|| format!("--{name} needs a value"))?;
                parsed.values.insert(name.to_string(), value);
            }
        }
        Ok(parsed)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn required(&self, name: &str) -> anyhow::Result<&str> {
        self.str(name)
            .with_context(|| format!("--{name} is required"))
    }

    pub fn get<T: FromStr>(&self, name: &str, default: T) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.str(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|e| anyhow::anyhow!("--{name} {v:?}: {e}")),
        }
    }
}

impl Args {
    /// `--concurrency 1,64`: the closed-loop concurrencies to run.
    pub fn concurrency(&self) -> anyhow::Result<Vec<usize>> {
        use anyhow::Context as _;
        self.str("concurrency")
            .unwrap_or("1,64")
            .split(',')
            .map(|c| {
                c.trim()
                    .parse()
                    .context("--concurrency takes numbers like 1,64")
            })
            .collect()
    }
}
