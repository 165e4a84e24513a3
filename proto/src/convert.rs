//! Conversions between the wire types and [`Resources`], validating on the way in.
//!
//! Errors name the offending field path (`tasks[2].resources[0]`), so that a handler can
//! answer INVALID_ARGUMENT with a message the client can act on.

use crate::resources::{scalar_from_f64, scalar_to_f64, RangeSet, ResourceError, Resources, Value};
use crate::v1;

/// A wire value that failed validation, with the path of the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {source}")]
pub struct FieldError {
    /// The field that held it.
    pub field: String,
    /// What is wrong with it.
    #[source]
    pub source: ResourceError,
}

/// Most resource entries accepted in one list.
pub const MAX_RESOURCE_ENTRIES: usize = 64;

/// Validate a wire resource list; `field` is its path, used in errors.
pub fn resources_from_wire(field: &str, list: &[v1::Resource]) -> Result<Resources, FieldError> {
    let at = |i: usize, source| FieldError {
        field: format!("{field}[{i}]"),
        source,
    };
    if list.len() > MAX_RESOURCE_ENTRIES {
        let source = ResourceError::TooManyEntries {
            max: MAX_RESOURCE_ENTRIES,
        };
        return Err(FieldError {
            field: field.to_string(),
            source,
        });
    }
    let mut out = Resources::new();
    for (i, r) in list.iter().enumerate() {
        let value = match &r.value {
            Some(v1::resource::Value::Scalar(s)) => Value::Scalar(scalar_from_f64(&r.name, *s).map_err(|e| at(i, e))?),
            Some(v1::resource::Value::Ranges(list)) => {
                let ranges: Vec<(u64, u64)> = list.range.iter().map(|r| (r.begin, r.end)).collect();
                Value::Ranges(RangeSet::from_ranges(&r.name, &ranges, true).map_err(|e| at(i, e))?)
            }
            None => {
                let source = ResourceError::NotANumber {
                    name: r.name.clone(),
                    value: "no value".into(),
                };
                return Err(at(i, source));
            }
        };
        out.insert_new(&r.name, value).map_err(|e| at(i, e))?;
    }
    Ok(out)
}

/// The wire form of `resources`, sorted by name.
pub fn resources_to_wire(resources: &Resources) -> Vec<v1::Resource> {
    resources
        .iter()
        .map(|(name, value)| v1::Resource {
            name: name.to_string(),
            value: Some(match value {
                Value::Scalar(milli) => v1::resource::Value::Scalar(scalar_to_f64(*milli)),
                Value::Ranges(set) => v1::resource::Value::Ranges(v1::RangeList {
                    range: set
                        .ranges()
                        .iter()
                        .map(|&(begin, end)| v1::Range { begin, end })
                        .collect(),
                }),
            }),
        })
        .collect()
}

/// Agent attributes (`name`, `value` pairs) as the wire carries them.
pub fn attributes_to_wire(attributes: &[(String, String)]) -> Vec<v1::Attribute> {
    attributes
        .iter()
        .map(|(name, value)| v1::Attribute {
            name: name.clone(),
            value: value.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(name: &str, v: f64) -> v1::Resource {
        v1::Resource {
            name: name.into(),
            value: Some(v1::resource::Value::Scalar(v)),
        }
    }

    #[test]
    fn round_trip() {
        let r = Resources::parse("cpus:1.5;mem:256;ports:[31000-31010,32000-32000]").unwrap();
        assert_eq!(resources_from_wire("resources", &resources_to_wire(&r)).unwrap(), r);
    }

    #[test]
    fn errors_name_the_field() {
        let bad = [scalar("cpus", 1.0), scalar("mem", f64::NAN)];
        let err = resources_from_wire("tasks[0].resources", &bad).unwrap_err();
        assert_eq!(err.field, "tasks[0].resources[1]");
        assert!(
            err.to_string().starts_with("tasks[0].resources[1]: resource \"mem\""),
            "{err}"
        );
        let dup = [scalar("cpus", 1.0), scalar("cpus", 2.0)];
        assert!(resources_from_wire("r", &dup)
            .unwrap_err()
            .to_string()
            .contains("duplicate"));
        let neg = [scalar("cpus", -0.5)];
        assert!(resources_from_wire("r", &neg)
            .unwrap_err()
            .to_string()
            .contains("negative"));
        let none = [v1::Resource {
            name: "cpus".into(),
            value: None,
        }];
        assert!(resources_from_wire("r", &none).is_err());
    }
}
