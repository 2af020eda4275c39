//! A tiny typed walker over `serde_json::Value` that remembers where it is, so that
//! every error names the JSON path of the field. serde's derive cannot tell us the
//! path of a failing field without an extra crate, and we want our own wording.

use super::error::{ConfigError, Result};
use serde_json::{Map, Value};

/// A JSON object being read; `finish` refuses any field nobody asked for.
pub struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
    seen: Vec<String>,
}

pub fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub fn as_obj<'a>(v: &'a Value, path: &str) -> Result<Obj<'a>> {
    match v {
        Value::Object(map) => Ok(Obj { map, path: path.to_string(), seen: Vec::new() }),
        other => Err(ConfigError::new(path, format!("expected an object, found {}", kind(other)))),
    }
}

pub fn as_str<'a>(v: &'a Value, path: &str) -> Result<&'a str> {
    v.as_str().ok_or_else(|| ConfigError::new(path, format!("expected a string, found {}", kind(v))))
}

impl<'a> Obj<'a> {
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn field_path(&self, name: &str) -> String {
        join(&self.path, name)
    }

    pub fn get(&mut self, name: &str) -> Option<&'a Value> {
        self.seen.push(name.to_string());
        self.map.get(name).filter(|v| !v.is_null())
    }

    /// The object's field names (for maps such as `headers`).
    pub fn keys(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }

    pub fn take_str(&mut self, name: &str) -> Result<&'a str> {
        let p = join(&self.path, name);
        match self.get(name) {
            Some(v) => as_str(v, &p),
            None => Err(ConfigError::new(p, "expected a string, found null")),
        }
    }

    pub fn opt_str(&mut self, name: &str) -> Result<Option<&'a str>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => as_str(v, &join(&self.path, name)).map(Some),
        }
    }

    pub fn req_str(&mut self, name: &str) -> Result<&'a str> {
        self.opt_str(name)?.ok_or_else(|| ConfigError::new(join(&self.path, name), "is required"))
    }

    pub fn opt_bool(&mut self, name: &str) -> Result<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(ConfigError::new(join(&self.path, name), format!("expected a boolean, found {}", kind(v)))),
        }
    }

    /// An unsigned integer within `min..=max`.
    pub fn opt_uint(&mut self, name: &'static str, min: u64, max: u64) -> Result<Option<u64>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => {
                let p = join(&self.path, name);
                let n = v
                    .as_u64()
                    .ok_or_else(|| ConfigError::new(&p, format!("expected a whole number, found {}", kind(v))))?;
                if n < min || n > max {
                    return Err(ConfigError::new(p, format!("{n} is outside {min}-{max}")));
                }
                Ok(Some(n))
            }
        }
    }

    /// An array field: each element with its path. Absent means empty.
    pub fn opt_array(&mut self, name: &str) -> Result<Vec<(String, &'a Value)>> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => {
                let p = join(&self.path, name);
                Ok(items.iter().enumerate().map(|(i, v)| (index(&p, i), v)).collect())
            }
            Some(v) => Err(ConfigError::new(join(&self.path, name), format!("expected an array, found {}", kind(v)))),
        }
    }

    pub fn opt_obj(&mut self, name: &str) -> Result<Option<Obj<'a>>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => as_obj(v, &join(&self.path, name)).map(Some),
        }
    }

    /// Every field must have been read: an unknown field is most often a typo that
    /// would otherwise silently disable a rule.
    pub fn finish(self) -> Result<()> {
        let mut unknown: Vec<&String> = self.map.keys().filter(|k| !self.seen.iter().any(|s| s == *k)).collect();
        unknown.sort_unstable();
        match unknown.first() {
            None => Ok(()),
            Some(k) => Err(ConfigError::new(
                join(&self.path, k),
                format!("unknown field (known here: {})", self.seen.join(", ")),
            )),
        }
    }
}
