//! Resources: named scalars in exact milli-units and named range sets (ports).
//!
//! Scalars are integers of 0.001 units, as Mesos rounds them, so sums kept in the replicated
//! state are exact and every master computes the same totals (DESIGN.md "Data model").
//! The text form is `cpus:4;mem:8192;disk:20000;ports:[31000-32000,33000-33010]`.
//!
//! Every way in (text, wire) validates: malformed, negative, NaN or infinite, too large,
//! duplicate or overlapping entries are errors that name the offending part. Arithmetic is
//! checked: no operation overflows or goes below zero.

use std::collections::BTreeMap;
use std::fmt;

/// One unit in milli-units.
pub const MILLI: u64 = 1000;

/// The largest scalar accepted, in milli-units (10^12 units). Leaves room to add a million
/// such values without overflowing u64, so cluster-wide sums cannot overflow in practice;
/// they are checked anyway.
pub const MAX_SCALAR_MILLI: u64 = 1_000_000_000_000_000;

/// Longest resource name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// Most disjoint ranges one range resource may hold.
pub const MAX_RANGES: usize = 1024;

/// Why a resource description was rejected. The message names the offending part.
// Each variant's message says what its fields are.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("resource entry {position} is empty")]
    EmptyEntry { position: usize },
    #[error("resource entry {} is not of the form name:value", crate::quote(.entry))]
    MissingColon { entry: String },
    #[error("invalid resource name {}: use lowercase letters, digits, '_', '-' or '.', starting with a letter, at most {MAX_NAME_LEN} characters", crate::quote(.name))]
    InvalidName { name: String },
    #[error("duplicate resource {}", crate::quote(.name))]
    Duplicate { name: String },
    #[error("resource {}: {} is not a number", crate::quote(.name), crate::quote(.value))]
    NotANumber { name: String, value: String },
    #[error("resource {}: negative value {value}", crate::quote(.name))]
    Negative { name: String, value: String },
    #[error("resource {}: {value} has more than 3 decimal places", crate::quote(.name))]
    TooPrecise { name: String, value: String },
    #[error("resource {}: {value} is too large (at most {max})", crate::quote(.name), max = MAX_SCALAR_MILLI / MILLI)]
    TooLarge { name: String, value: String },
    #[error("resource {}: malformed range set {}, expected [begin-end,...]", crate::quote(.name), crate::quote(.value))]
    MalformedRanges { name: String, value: String },
    #[error("resource {}: range {begin}-{end} has begin after end", crate::quote(.name))]
    InvertedRange { name: String, begin: u64, end: u64 },
    #[error("resource {}: ranges overlap at {at}", crate::quote(.name))]
    OverlappingRanges { name: String, at: u64 },
    #[error("resource {}: more than {MAX_RANGES} ranges", crate::quote(.name))]
    TooManyRanges { name: String },
    #[error("resource {} is a scalar in one operand and a range set in the other", crate::quote(.name))]
    KindMismatch { name: String },
    #[error("resource {}: sum overflows", crate::quote(.name))]
    Overflow { name: String },
    #[error("resource {}: not enough to subtract", crate::quote(.name))]
    Insufficient { name: String },
    #[error("more than {max} entries")]
    TooManyEntries { max: usize },
}

/// A set of disjoint, non-adjacent, sorted inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct RangeSet {
    ranges: Vec<(u64, u64)>,
}

impl RangeSet {
    /// Build from arbitrary ranges, rejecting inverted ones and (if `strict`) overlaps.
    /// Adjacent ranges are merged.
    pub fn from_ranges(name: &str, input: &[(u64, u64)], strict: bool) -> Result<Self, ResourceError> {
        if input.len() > MAX_RANGES {
            return Err(ResourceError::TooManyRanges { name: name.into() });
        }
        let mut sorted = input.to_vec();
        for &(begin, end) in &sorted {
            if begin > end {
                return Err(ResourceError::InvertedRange {
                    name: name.into(),
                    begin,
                    end,
                });
            }
        }
        sorted.sort_unstable();
        let mut ranges: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
        for (begin, end) in sorted {
            match ranges.last_mut() {
                Some(last) if begin <= last.1 => {
                    if strict {
                        return Err(ResourceError::OverlappingRanges {
                            name: name.into(),
                            at: begin,
                        });
                    }
                    last.1 = last.1.max(end);
                }
                Some(last) if last.1.checked_add(1) == Some(begin) => last.1 = end,
                _ => ranges.push((begin, end)),
            }
        }
        Ok(RangeSet { ranges })
    }

    /// The ranges, sorted and disjoint.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Whether the set holds no range.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// How many values the set holds (saturating at u64::MAX for the full range).
    pub fn len(&self) -> u64 {
        self.ranges
            .iter()
            .fold(0u64, |n, &(b, e)| n.saturating_add(e - b).saturating_add(1))
    }

    /// Whether every value of `other` is in `self`.
    pub fn contains(&self, other: &RangeSet) -> bool {
        // Both sorted: walk self once.
        let mut mine = self.ranges.iter().peekable();
        'outer: for &(b, e) in &other.ranges {
            while let Some(&&(mb, me)) = mine.peek() {
                if me < b {
                    mine.next();
                    continue;
                }
                if mb <= b && e <= me {
                    continue 'outer;
                }
                return false;
            }
            return false;
        }
        true
    }

    /// Union.
    pub fn union(&self, other: &RangeSet) -> RangeSet {
        let mut all = self.ranges.clone();
        all.extend_from_slice(&other.ranges);
        // Non-strict merge of valid ranges cannot fail, and both inputs are bounded.
        RangeSet::from_ranges("", &all, false).unwrap_or_default()
    }

    /// Difference: the values of `self` not in `other`.
    pub fn difference(&self, other: &RangeSet) -> RangeSet {
        let mut out = Vec::new();
        for &(b, e) in &self.ranges {
            let mut start = b;
            let mut done = false;
            for &(ob, oe) in &other.ranges {
                if oe < start || ob > e {
                    continue;
                }
                if ob > start {
                    out.push((start, ob - 1));
                }
                match oe.checked_add(1) {
                    Some(next) if oe < e => start = next,
                    _ => {
                        done = true;
                        break;
                    }
                }
            }
            if !done {
                out.push((start, e));
            }
        }
        RangeSet { ranges: out }
    }
}

/// A value of one resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Value {
    /// A scalar in milli-units.
    Scalar(u64),
    /// A set of ranges.
    Ranges(RangeSet),
}

/// A bundle of named resources. Empty scalars and empty range sets are dropped, so two equal
/// bundles compare equal whatever way they were built.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Resources {
    entries: BTreeMap<String, Value>,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= MAX_NAME_LEN
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-' | '.'))
}

/// Parse a non-negative decimal with at most three fractional digits into milli-units,
/// exactly (no floating point).
fn parse_scalar(name: &str, value: &str) -> Result<u64, ResourceError> {
    let err_nan = || ResourceError::NotANumber {
        name: name.into(),
        value: value.into(),
    };
    if let Some(rest) = value.strip_prefix('-') {
        if !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return Err(ResourceError::Negative {
                name: name.into(),
                value: value.into(),
            });
        }
        return Err(err_nan());
    }
    let (int, frac) = value.split_once('.').unwrap_or((value, ""));
    if int.is_empty() || !int.chars().all(|c| c.is_ascii_digit()) || !frac.chars().all(|c| c.is_ascii_digit()) {
        return Err(err_nan());
    }
    if value.ends_with('.') {
        return Err(err_nan());
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > 3 {
        return Err(ResourceError::TooPrecise {
            name: name.into(),
            value: value.into(),
        });
    }
    let too_large = || ResourceError::TooLarge {
        name: name.into(),
        value: value.into(),
    };
    let int: u64 = int.trim_start_matches('0').parse::<u64>().or_else(|_| {
        if int.chars().all(|c| c == '0') {
            Ok(0)
        } else {
            Err(too_large())
        }
    })?;
    let frac_milli = format!("{frac:0<3}").parse::<u64>().map_err(|_| err_nan())?;
    let milli = int
        .checked_mul(MILLI)
        .and_then(|m| m.checked_add(frac_milli))
        .ok_or_else(too_large)?;
    if milli > MAX_SCALAR_MILLI {
        return Err(too_large());
    }
    Ok(milli)
}

fn parse_ranges(name: &str, value: &str) -> Result<RangeSet, ResourceError> {
    let malformed = || ResourceError::MalformedRanges {
        name: name.into(),
        value: value.into(),
    };
    let inner = value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .ok_or_else(malformed)?;
    let mut ranges = Vec::new();
    if !inner.trim().is_empty() {
        for part in inner.split(',') {
            let part = part.trim();
            let (b, e) = part.split_once('-').unwrap_or((part, part));
            let b: u64 = b.trim().parse().map_err(|_| malformed())?;
            let e: u64 = e.trim().parse().map_err(|_| malformed())?;
            ranges.push((b, e));
        }
    }
    RangeSet::from_ranges(name, &ranges, true)
}

/// Convert a wire (floating point) scalar to milli-units, rounding to 0.001 as Mesos does.
pub fn scalar_from_f64(name: &str, value: f64) -> Result<u64, ResourceError> {
    if !value.is_finite() {
        return Err(ResourceError::NotANumber {
            name: name.into(),
            value: value.to_string(),
        });
    }
    if value < 0.0 {
        return Err(ResourceError::Negative {
            name: name.into(),
            value: value.to_string(),
        });
    }
    let milli = (value * MILLI as f64).round();
    if milli > MAX_SCALAR_MILLI as f64 {
        return Err(ResourceError::TooLarge {
            name: name.into(),
            value: value.to_string(),
        });
    }
    Ok(milli as u64)
}

/// Milli-units as the floating point value the wire carries.
pub fn scalar_to_f64(milli: u64) -> f64 {
    milli as f64 / MILLI as f64
}

impl Resources {
    /// No resources.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parse the text form. An empty string is no resources.
    pub fn parse(text: &str) -> Result<Self, ResourceError> {
        let mut out = Resources::new();
        if text.trim().is_empty() {
            return Ok(out);
        }
        for (position, entry) in text.split(';').enumerate() {
            let entry = entry.trim();
            if entry.is_empty() {
                return Err(ResourceError::EmptyEntry { position: position + 1 });
            }
            let (name, value) = entry
                .split_once(':')
                .ok_or_else(|| ResourceError::MissingColon { entry: entry.into() })?;
            let (name, value) = (name.trim(), value.trim());
            out.insert_new(
                name,
                if value.starts_with('[') {
                    Value::Ranges(parse_ranges(name, value)?)
                } else {
                    Value::Scalar(parse_scalar(name, value)?)
                },
            )?;
        }
        Ok(out)
    }

    /// Add one entry that must not exist yet; validates the name.
    pub fn insert_new(&mut self, name: &str, value: Value) -> Result<(), ResourceError> {
        if !valid_name(name) {
            return Err(ResourceError::InvalidName { name: name.into() });
        }
        if self.entries.contains_key(name) {
            return Err(ResourceError::Duplicate { name: name.into() });
        }
        if let Value::Scalar(v) = value {
            if v > MAX_SCALAR_MILLI {
                return Err(ResourceError::TooLarge {
                    name: name.into(),
                    value: scalar_to_f64(v).to_string(),
                });
            }
        }
        self.entries.insert(name.to_string(), value);
        self.normalize();
        Ok(())
    }

    /// A builder for tests and examples: `Resources::scalar("cpus", 4000)`.
    pub fn scalar(name: &str, milli: u64) -> Result<Self, ResourceError> {
        let mut r = Resources::new();
        r.insert_new(name, Value::Scalar(milli))?;
        Ok(r)
    }

    fn normalize(&mut self) {
        self.entries.retain(|_, v| match v {
            Value::Scalar(s) => *s > 0,
            Value::Ranges(r) => !r.is_empty(),
        });
    }

    /// The entries, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Whether no resource has a value above zero.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The scalar named `name` in milli-units (0 if absent or a range set).
    pub fn scalar_milli(&self, name: &str) -> u64 {
        match self.entries.get(name) {
            Some(Value::Scalar(v)) => *v,
            _ => 0,
        }
    }

    /// The range set named `name` (empty if absent).
    pub fn ranges(&self, name: &str) -> RangeSet {
        match self.entries.get(name) {
            Some(Value::Ranges(r)) => r.clone(),
            _ => RangeSet::default(),
        }
    }

    /// `self + other`, checked.
    pub fn checked_add(&self, other: &Resources) -> Result<Resources, ResourceError> {
        let mut out = self.clone();
        for (name, value) in &other.entries {
            let merged = match (out.entries.get(name), value) {
                (None, v) => v.clone(),
                (Some(Value::Scalar(a)), Value::Scalar(b)) => Value::Scalar(
                    a.checked_add(*b)
                        .ok_or_else(|| ResourceError::Overflow { name: name.clone() })?,
                ),
                (Some(Value::Ranges(a)), Value::Ranges(b)) => Value::Ranges(a.union(b)),
                _ => return Err(ResourceError::KindMismatch { name: name.clone() }),
            };
            out.entries.insert(name.clone(), merged);
        }
        Ok(out)
    }

    /// `self - other`; fails unless `self` contains `other`.
    pub fn checked_sub(&self, other: &Resources) -> Result<Resources, ResourceError> {
        let mut out = self.clone();
        for (name, value) in &other.entries {
            let insufficient = || ResourceError::Insufficient { name: name.clone() };
            let left = match (out.entries.get(name), value) {
                (Some(Value::Scalar(a)), Value::Scalar(b)) => {
                    Value::Scalar(a.checked_sub(*b).ok_or_else(insufficient)?)
                }
                (Some(Value::Ranges(a)), Value::Ranges(b)) if a.contains(b) => Value::Ranges(a.difference(b)),
                (Some(Value::Scalar(_)), Value::Ranges(_)) | (Some(Value::Ranges(_)), Value::Scalar(_)) => {
                    return Err(ResourceError::KindMismatch { name: name.clone() })
                }
                _ => return Err(insufficient()),
            };
            out.entries.insert(name.clone(), left);
        }
        out.normalize();
        Ok(out)
    }

    /// Whether `self` holds at least `other` of every resource.
    pub fn contains(&self, other: &Resources) -> bool {
        other
            .entries
            .iter()
            .all(|(name, want)| match (self.entries.get(name), want) {
                (Some(Value::Scalar(have)), Value::Scalar(want)) => have >= want,
                (Some(Value::Ranges(have)), Value::Ranges(want)) => have.contains(want),
                _ => false,
            })
    }

    /// This bundle's share of `total` for one scalar resource, in [0, ∞).
    pub fn share_of(&self, total: &Resources, name: &str) -> f64 {
        match total.scalar_milli(name) {
            0 => 0.0,
            t => self.scalar_milli(name) as f64 / t as f64,
        }
    }

    /// The dominant share (Ghodsi et al., NSDI 2011, section 4): the largest share of any
    /// scalar resource of `total` that this allocation holds. Range resources are not
    /// shares, as in Mesos' DRF sorter.
    pub fn dominant_share(&self, total: &Resources) -> f64 {
        total
            .entries
            .iter()
            .filter(|(_, v)| matches!(v, Value::Scalar(t) if *t > 0))
            .map(|(name, _)| self.share_of(total, name))
            .fold(0.0, f64::max)
    }
}

fn fmt_scalar(f: &mut fmt::Formatter<'_>, milli: u64) -> fmt::Result {
    let (int, frac) = (milli / MILLI, milli % MILLI);
    if frac == 0 {
        write!(f, "{int}")
    } else {
        let frac = format!("{frac:03}");
        write!(f, "{int}.{}", frac.trim_end_matches('0'))
    }
}

impl fmt::Display for Resources {
    /// The text form; parsing it gives back an equal value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{name}:")?;
            match value {
                Value::Scalar(v) => fmt_scalar(f, *v)?,
                Value::Ranges(r) => {
                    f.write_str("[")?;
                    for (j, (b, e)) in r.ranges().iter().enumerate() {
                        let sep = if j > 0 { "," } else { "" };
                        write!(f, "{sep}{b}-{e}")?;
                    }
                    f.write_str("]")?;
                }
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for Resources {
    type Err = ResourceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Resources::parse(s)
    }
}
