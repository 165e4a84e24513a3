//! Apache Mesos' v1 wire protocol, the part Corral serves: the messages (`mesos.v1`, with
//! `mesos.v1.executor` for the Executor HTTP API, `mesos.v1.scheduler` for the Scheduler
//! HTTP API and `mesos.v1.master` for the Operator HTTP API), their JSON form as Mesos
//! writes it, and RecordIO, the framing of Mesos' event streams.
//!
//! The definitions are Corral's own (`proto/mesos/v1/*.proto`) with the protocol's names and
//! numbers, so Mesos clients (pymesos, mesos-go, the Java and C++ drivers) interoperate.
//!
//! JSON as Mesos speaks it: original field names (`framework_id`, not `frameworkId`), enums
//! by name, bytes in base64, 64-bit integers as numbers; unknown fields are skipped, as the
//! binary encoding skips them.

/// The generated `mesos.v1` messages.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/mesos.v1.rs"));

    /// The generated `mesos.v1.executor` messages (the Executor HTTP API).
    pub mod executor {
        #![allow(clippy::all, missing_docs)]
        include!(concat!(env!("OUT_DIR"), "/mesos.v1.executor.rs"));
    }

    /// The generated `mesos.v1.scheduler` messages (the Scheduler HTTP API).
    pub mod scheduler {
        #![allow(clippy::all, missing_docs)]
        include!(concat!(env!("OUT_DIR"), "/mesos.v1.scheduler.rs"));
    }

    /// The generated `mesos.v1.master` messages (the Operator HTTP API).
    pub mod master {
        #![allow(clippy::all, missing_docs)]
        include!(concat!(env!("OUT_DIR"), "/mesos.v1.master.rs"));
    }
}

pub mod convert;

/// The media types Mesos' HTTP APIs speak, and how a request names them.
pub mod media {
    /// JSON.
    pub const JSON: &str = "application/json";
    /// Protobuf.
    pub const PROTOBUF: &str = "application/x-protobuf";

    /// Largest call body the Mesos HTTP APIs accept (the agent's executor API, the
    /// masters' scheduler and operator APIs): 413 past it.
    pub const MAX_CALL_BYTES: usize = 4 << 20;

    /// One of the two media types.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Media {
        /// `application/json`, Mesos' JSON.
        Json,
        /// `application/x-protobuf`.
        Protobuf,
    }

    impl Media {
        /// Its name, for `Content-Type`.
        pub fn name(self) -> &'static str {
            match self {
                Media::Json => JSON,
                Media::Protobuf => PROTOBUF,
            }
        }

        /// The media type a `Content-Type` value names (parameters ignored), if one of the
        /// two.
        pub fn parse(value: &str) -> Option<Media> {
            let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            match essence.as_str() {
                JSON => Some(Media::Json),
                PROTOBUF => Some(Media::Protobuf),
                _ => None,
            }
        }

        /// The request's media type from its `Content-Type` header, or the refusal (for a 415).
        pub fn of_request(content_type: Option<&str>) -> Result<Media, String> {
            let Some(value) = content_type else {
                return Err(format!("Content-Type: missing; expected {JSON} or {PROTOBUF}"));
            };
            Media::parse(value)
                .ok_or_else(|| format!("Content-Type: {} is neither {JSON} nor {PROTOBUF}", crate::quote(value)))
        }

        /// The media type of the answer: the first of the two that `accept` (the `Accept`
        /// header) names, else `request`'s own when it allows anything or is absent; the
        /// refusal (for a 406) when it allows neither.
        pub fn answer(accept: Option<&str>, request: Media) -> Result<Media, String> {
            let Some(accept) = accept else {
                return Ok(request);
            };
            let mut any = false;
            for part in accept.split(',') {
                let essence = part.split(';').next().unwrap_or("").trim();
                if essence == "*/*" || essence == "application/*" {
                    any = true;
                } else if let Some(m) = Media::parse(essence) {
                    return Ok(m);
                }
            }
            if any {
                return Ok(request);
            }
            Err(format!(
                "Accept: {} names neither {JSON} nor {PROTOBUF}",
                crate::quote(accept)
            ))
        }
    }
}

/// Mesos' JSON encoding of the `mesos.v1` messages.
pub mod json {
    use std::sync::OnceLock;

    use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};

    /// Why a JSON body is not the message it should be.
    #[derive(Debug, thiserror::Error)]
    pub enum JsonError {
        /// Not JSON, or not the message's shape; the text names the field or the position.
        #[error("{0}")]
        Invalid(String),
        /// The message type is not one of Corral's Mesos definitions (a bug).
        #[error("no message type {0} in the Mesos definitions")]
        UnknownType(String),
    }

    fn pool() -> &'static DescriptorPool {
        static POOL: OnceLock<DescriptorPool> = OnceLock::new();
        POOL.get_or_init(|| {
            // Written by the build script from the same files as the messages.
            DescriptorPool::decode(include_bytes!(concat!(env!("OUT_DIR"), "/mesos_v1.bin")).as_slice())
                .expect("the build script writes a valid descriptor set")
        })
    }

    fn descriptor(full_name: &str) -> Result<prost_reflect::MessageDescriptor, JsonError> {
        pool()
            .get_message_by_name(full_name)
            .ok_or_else(|| JsonError::UnknownType(full_name.to_string()))
    }

    /// Longest error text kept: serde's messages quote the offending value, which a client
    /// may make megabytes long.
    pub const MAX_ERROR_CHARS: usize = 256;

    fn bounded(text: String) -> String {
        match text.char_indices().nth(MAX_ERROR_CHARS) {
            None => text,
            Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
        }
    }

    /// Decode message `T` (named `full_name`, e.g. `mesos.v1.executor.Call`) from JSON.
    pub fn decode<T: prost::Message + Default>(full_name: &str, body: &[u8]) -> Result<T, JsonError> {
        let desc = descriptor(full_name)?;
        let mut de = serde_json::Deserializer::from_slice(body);
        let options = DeserializeOptions::new().deny_unknown_fields(false);
        let mut track = serde_path_to_error::Track::new();
        let dynamic = DynamicMessage::deserialize_with_options(
            desc,
            serde_path_to_error::Deserializer::new(&mut de, &mut track),
            &options,
        )
        .map_err(|e| {
            let path = track.path().to_string();
            JsonError::Invalid(bounded(if path == "." || path.is_empty() {
                e.to_string()
            } else {
                format!("{path}: {e}")
            }))
        })?;
        de.end().map_err(|e| JsonError::Invalid(bounded(e.to_string())))?;
        dynamic
            .transcode_to::<T>()
            .map_err(|e| JsonError::Invalid(bounded(e.to_string())))
    }

    /// Encode message `T` (named `full_name`) as Mesos' JSON.
    pub fn encode<T: prost::Message>(full_name: &str, message: &T) -> Result<Vec<u8>, JsonError> {
        let desc = descriptor(full_name)?;
        let dynamic = DynamicMessage::decode(desc, message.encode_to_vec().as_slice())
            .map_err(|e| JsonError::Invalid(e.to_string()))?;
        let mut out = Vec::new();
        let mut ser = serde_json::Serializer::new(&mut out);
        let options = SerializeOptions::new()
            .use_proto_field_name(true)
            .stringify_64_bit_integers(false)
            .skip_default_fields(true);
        dynamic
            .serialize_with_options(&mut ser, &options)
            .map_err(|e| JsonError::Invalid(e.to_string()))?;
        Ok(out)
    }
}

/// RecordIO, the framing of Mesos' event streams: each record is its length in bytes in
/// decimal, a newline, then the record.
pub mod recordio {
    /// Longest length prefix read ("18446744073709551615" is 20 digits).
    const MAX_PREFIX: usize = 20;

    /// One record, framed.
    pub fn frame(record: &[u8]) -> Vec<u8> {
        let mut out = format!("{}\n", record.len()).into_bytes();
        out.extend_from_slice(record);
        out
    }

    /// Why a RecordIO stream cannot be read.
    #[derive(Debug, thiserror::Error, PartialEq, Eq)]
    pub enum RecordIoError {
        /// The length prefix is not a decimal number followed by a newline.
        #[error("malformed RecordIO length prefix")]
        BadPrefix,
        /// A record longer than the reader allows.
        #[error("RecordIO record of {0} bytes is over the limit of {1}")]
        TooLong(u64, usize),
    }

    /// Reads records out of a byte stream fed in pieces.
    #[derive(Debug)]
    pub struct Reader {
        buffer: Vec<u8>,
        max: usize,
    }

    impl Reader {
        /// A reader refusing records longer than `max` bytes.
        pub fn new(max: usize) -> Self {
            Reader {
                buffer: Vec::new(),
                max,
            }
        }

        /// Add bytes as they arrive.
        pub fn feed(&mut self, bytes: &[u8]) {
            self.buffer.extend_from_slice(bytes);
        }

        /// The next whole record, if it has arrived.
        pub fn next_record(&mut self) -> Result<Option<Vec<u8>>, RecordIoError> {
            let Some(nl) = self.buffer.iter().take(MAX_PREFIX + 1).position(|b| *b == b'\n') else {
                if self.buffer.len() > MAX_PREFIX {
                    return Err(RecordIoError::BadPrefix);
                }
                return Ok(None);
            };
            let len: u64 = std::str::from_utf8(&self.buffer[..nl])
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or(RecordIoError::BadPrefix)?;
            if len > self.max as u64 {
                return Err(RecordIoError::TooLong(len, self.max));
            }
            let len = len as usize;
            if self.buffer.len() < nl + 1 + len {
                return Ok(None);
            }
            let record = self.buffer[nl + 1..nl + 1 + len].to_vec();
            self.buffer.drain(..nl + 1 + len);
            Ok(Some(record))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::v1::executor as exec;
    use super::*;

    #[test]
    fn json_is_mesos_shaped_both_ways() {
        let call = exec::Call {
            executor_id: v1::ExecutorId { value: "e1".into() },
            framework_id: v1::FrameworkId { value: "f1".into() },
            r#type: Some(exec::call::Type::Update as i32),
            update: Some(exec::call::Update {
                status: v1::TaskStatus {
                    task_id: v1::TaskId { value: "t1".into() },
                    state: v1::TaskState::TaskRunning as i32,
                    uuid: Some(vec![0, 1, 2, 255]),
                    timestamp: Some(1.5),
                    ..Default::default()
                },
            }),
            ..Default::default()
        };
        let text = json::encode("mesos.v1.executor.Call", &call).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(value["type"], "UPDATE");
        assert_eq!(value["executor_id"]["value"], "e1");
        assert_eq!(value["update"]["status"]["state"], "TASK_RUNNING");
        assert_eq!(value["update"]["status"]["uuid"], "AAEC/w==");
        assert_eq!(value["update"]["status"]["timestamp"], 1.5);
        let back: exec::Call = json::decode("mesos.v1.executor.Call", &text).unwrap();
        assert_eq!(back, call);
        // As pymesos writes it, with a field Corral does not know.
        let pymesos = br#"{"type": "SUBSCRIBE", "framework_id": {"value": "f"}, "executor_id": {"value": "e"},
            "subscribe": {"unacknowledged_tasks": [], "unacknowledged_updates": []}, "extra": 1}"#;
        let c: exec::Call = json::decode("mesos.v1.executor.Call", pymesos).unwrap();
        assert_eq!(c.r#type, Some(exec::call::Type::Subscribe as i32));
        assert_eq!(c.framework_id.value, "f");
        // 64-bit integers are numbers, as Mesos writes them.
        let d = v1::DurationInfo {
            nanoseconds: 5_000_000_000,
        };
        assert_eq!(
            json::encode("mesos.v1.DurationInfo", &d).unwrap(),
            br#"{"nanoseconds":5000000000}"#
        );
    }

    #[test]
    fn a_pymesos_subscribe_and_accept_decode() {
        use super::v1::scheduler as sched;
        // As pymesos's MesosSchedulerDriver writes them.
        let subscribe = br#"{"type": "SUBSCRIBE", "subscribe": {"framework_info": {"user": "u", "name": "py",
            "hostname": "h", "failover_timeout": 100.0, "capabilities": [{"type": "MULTI_ROLE"}], "roles": ["*"]}}}"#;
        let c: sched::Call = json::decode("mesos.v1.scheduler.Call", subscribe).unwrap();
        assert_eq!(c.r#type, Some(sched::call::Type::Subscribe as i32));
        let info = c.subscribe.unwrap().framework_info;
        assert_eq!(
            (info.user.as_str(), info.name.as_str(), info.failover_timeout),
            ("u", "py", Some(100.0))
        );
        let accept = br#"{"type": "ACCEPT", "framework_id": {"value": "f"}, "accept": {"offer_ids": [{"value": "o1"}],
            "operations": [{"type": "LAUNCH", "launch": {"task_infos": [{"name": "t", "task_id": {"value": "t1"},
            "agent_id": {"value": "a1"}, "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}}],
            "command": {"value": "echo hi"}}]}}], "filters": {"refuse_seconds": 5.0}}}"#;
        let c: sched::Call = json::decode("mesos.v1.scheduler.Call", accept).unwrap();
        let a = c.accept.unwrap();
        let task = &a.operations[0].launch.as_ref().unwrap().task_infos[0];
        assert_eq!(task.task_id.value, "t1");
        assert_eq!(task.command.as_ref().unwrap().value.as_deref(), Some("echo hi"));
        assert_eq!(a.filters.unwrap().refuse_seconds, Some(5.0));
        // An event as a Mesos master writes it.
        let ev = sched::Event {
            r#type: Some(sched::event::Type::Subscribed as i32),
            subscribed: Some(sched::event::Subscribed {
                framework_id: v1::FrameworkId { value: "f".into() },
                heartbeat_interval_seconds: Some(15.0),
                master_info: None,
            }),
            ..Default::default()
        };
        let text = String::from_utf8(json::encode("mesos.v1.scheduler.Event", &ev).unwrap()).unwrap();
        assert_eq!(
            text,
            r#"{"type":"SUBSCRIBED","subscribed":{"framework_id":{"value":"f"},"heartbeat_interval_seconds":15.0}}"#
        );
    }

    #[test]
    fn bad_json_says_what_is_wrong() {
        for (body, needle) in [
            (&b"{not json"[..], "key must be a string"),
            (br#"{"executor_id": 5}"#, "executor_id"),
            (br#"{"type": "SUBSCRIBE"} trailing"#, "trailing"),
        ] {
            let e = json::decode::<v1::executor::Call>("mesos.v1.executor.Call", body).unwrap_err();
            assert!(e.to_string().contains(needle), "{e} does not name {needle}");
        }
        // A wrong value is not echoed whole.
        let long = format!(r#"{{"executor_id": "{}"}}"#, "x".repeat(100_000));
        let e = json::decode::<v1::executor::Call>("mesos.v1.executor.Call", long.as_bytes()).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("executor_id") && text.len() < 1024,
            "{} bytes",
            text.len()
        );
        // An enum name this definition does not know is skipped like an unknown field (the
        // server then finds the call type missing).
        let c: exec::Call = json::decode("mesos.v1.executor.Call", br#"{"type": "NOPE"}"#).unwrap();
        assert_eq!(c.r#type, None);
    }

    #[test]
    fn recordio_frames_and_reads_records_in_pieces() {
        let mut stream = recordio::frame(b"hello");
        stream.extend(recordio::frame(b""));
        stream.extend(recordio::frame(&[7u8; 300]));
        let mut reader = recordio::Reader::new(1024);
        let mut got = Vec::new();
        for piece in stream.chunks(7) {
            reader.feed(piece);
            while let Some(r) = reader.next_record().unwrap() {
                got.push(r);
            }
        }
        assert_eq!(got, vec![b"hello".to_vec(), Vec::new(), vec![7u8; 300]]);
        let mut reader = recordio::Reader::new(10);
        reader.feed(b"11\nxxxxxxxxxxx");
        assert_eq!(reader.next_record(), Err(recordio::RecordIoError::TooLong(11, 10)));
        let mut reader = recordio::Reader::new(10);
        reader.feed(b"abc\n");
        assert_eq!(reader.next_record(), Err(recordio::RecordIoError::BadPrefix));
    }
}
