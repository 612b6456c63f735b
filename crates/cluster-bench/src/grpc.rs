//! Just enough protobuf and gRPC framing to speak etcd's `KV` and `Maintenance` services by hand.
//!
//! ```text
//!  gRPC message on an HTTP/2 DATA stream:
//!  +------------+---------------------+------------------------+
//!  | flag (1 B) | length (4 B, BE)    | protobuf message       |
//!  | 0 = plain  | of the message      | (length bytes)         |
//!  +------------+---------------------+------------------------+
//! ```
//!
//! Protobuf fields used here are varints (wire type 0) and length-delimited bytes (wire type 2):
//! a field is `varint(number << 3 | wire type)` followed by its varint value, or by a varint length
//! and that many bytes.

use std::fmt;

/// Protobuf wire type of a varint field.
const WIRE_VARINT: u8 = 0;
/// Protobuf wire type of a 64-bit fixed field.
const WIRE_FIXED64: u8 = 1;
/// Protobuf wire type of a length-delimited field (bytes, strings, nested messages).
const WIRE_LENGTH_DELIMITED: u8 = 2;
/// Protobuf wire type of a 32-bit fixed field.
const WIRE_FIXED32: u8 = 5;

/// Why a gRPC frame or protobuf message could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// The bytes end before the frame or field does.
    Truncated,
    /// The frame is compressed (flag 1); we never ask for compression.
    Compressed,
    /// Bytes are left after the one message of a unary reply.
    TrailingBytes(usize),
    /// A wire type this decoder does not know (groups, or garbage).
    UnknownWireType(u8),
    /// A varint longer than 10 bytes.
    VarintOverflow,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "truncated grpc frame or protobuf field"),
            DecodeError::Compressed => write!(f, "compressed grpc frame (not requested)"),
            DecodeError::TrailingBytes(count) => {
                write!(f, "{count} bytes after the grpc message")
            }
            DecodeError::UnknownWireType(wire) => write!(f, "unknown protobuf wire type {wire}"),
            DecodeError::VarintOverflow => write!(f, "protobuf varint longer than 10 bytes"),
        }
    }
}

impl std::error::Error for DecodeError {}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, (u64::from(field) << 3) | u64::from(WIRE_LENGTH_DELIMITED));
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// `etcdserverpb.PutRequest { key = 1, value = 2 }`.
pub(crate) fn put_request(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(key.len() + value.len() + 8);
    put_bytes_field(&mut message, 1, key);
    put_bytes_field(&mut message, 2, value);
    message
}

/// `etcdserverpb.RangeRequest { key = 1 }`: a single-key, linearizable (not serializable) read.
pub(crate) fn range_request(key: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(key.len() + 4);
    put_bytes_field(&mut message, 1, key);
    message
}

/// Wraps one protobuf message in an uncompressed gRPC frame.
pub(crate) fn frame(message: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// Reads the single message of a unary gRPC reply body.
pub(crate) fn unframe(body: &[u8]) -> Result<&[u8], DecodeError> {
    if body.len() < 5 {
        return Err(DecodeError::Truncated);
    }
    if body[0] != 0 {
        return Err(DecodeError::Compressed);
    }
    let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let rest = &body[5..];
    if rest.len() < length {
        return Err(DecodeError::Truncated);
    }
    if rest.len() > length {
        return Err(DecodeError::TrailingBytes(rest.len() - length));
    }
    Ok(rest)
}

/// The value of one protobuf field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldValue<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed(u64),
}

fn take_varint(bytes: &mut &[u8]) -> Result<u64, DecodeError> {
    let mut value = 0u64;
    for index in 0..10 {
        let (&byte, rest) = bytes.split_first().ok_or(DecodeError::Truncated)?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeError::VarintOverflow)
}

fn take<'a>(bytes: &mut &'a [u8], count: usize) -> Result<&'a [u8], DecodeError> {
    if bytes.len() < count {
        return Err(DecodeError::Truncated);
    }
    let (head, rest) = bytes.split_at(count);
    *bytes = rest;
    Ok(head)
}

/// Every top-level field of a protobuf message, in order: `(field number, value)`.
pub(crate) fn fields(mut message: &[u8]) -> Result<Vec<(u32, FieldValue<'_>)>, DecodeError> {
    let mut found = Vec::new();
    while !message.is_empty() {
        let tag = take_varint(&mut message)?;
        let number = (tag >> 3) as u32;
        let value = match (tag & 0x7) as u8 {
            WIRE_VARINT => FieldValue::Varint(take_varint(&mut message)?),
            WIRE_LENGTH_DELIMITED => {
                let length = take_varint(&mut message)? as usize;
                FieldValue::Bytes(take(&mut message, length)?)
            }
            WIRE_FIXED64 => {
                let raw = take(&mut message, 8)?;
                FieldValue::Fixed(u64::from_le_bytes(raw.try_into().expect("8 bytes")))
            }
            WIRE_FIXED32 => {
                let raw = take(&mut message, 4)?;
                FieldValue::Fixed(u64::from(u32::from_le_bytes(raw.try_into().expect("4 bytes"))))
            }
            other => return Err(DecodeError::UnknownWireType(other)),
        };
        found.push((number, value));
    }
    Ok(found)
}

fn varint_field(message: &[u8], number: u32) -> Result<Option<u64>, DecodeError> {
    Ok(fields(message)?.into_iter().rev().find_map(|(field, value)| match value {
        FieldValue::Varint(value) if field == number => Some(value),
        _ => None,
    }))
}

fn bytes_field(message: &[u8], number: u32) -> Result<Option<&[u8]>, DecodeError> {
    Ok(fields(message)?.into_iter().rev().find_map(|(field, value)| match value {
        FieldValue::Bytes(bytes) if field == number => Some(bytes),
        _ => None,
    }))
}

/// What `etcdserverpb.Maintenance/Status` says about one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemberStatus {
    /// `header.member_id`: the member that answered.
    pub(crate) member_id: u64,
    /// `leader`: the member it follows (0: none known).
    pub(crate) leader: u64,
    /// `raftTerm`.
    pub(crate) raft_term: u64,
}

/// Decodes `StatusResponse { header = 1 { member_id = 2 }, leader = 4, raftTerm = 6 }`.
pub(crate) fn status_response(message: &[u8]) -> Result<MemberStatus, DecodeError> {
    let member_id = match bytes_field(message, 1)? {
        Some(header) => varint_field(header, 2)?.unwrap_or(0),
        None => 0,
    };
    Ok(MemberStatus {
        member_id,
        leader: varint_field(message, 4)?.unwrap_or(0),
        raft_term: varint_field(message, 6)?.unwrap_or(0),
    })
}

/// The values in `RangeResponse { kvs = 2 (repeated KeyValue { key = 1, value = 5 }) }`.
pub(crate) fn range_values(message: &[u8]) -> Result<Vec<Vec<u8>>, DecodeError> {
    let mut values = Vec::new();
    for (field, value) in fields(message)? {
        if let (2, FieldValue::Bytes(key_value)) = (field, value) {
            values.push(bytes_field(key_value, 5)?.unwrap_or_default().to_vec());
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_request_matches_protoc_encoding() {
        // protoc --encode=etcdserverpb.PutRequest: key: "k1" value: "abc"
        assert_eq!(put_request(b"k1", b"abc"), [0x0a, 0x02, b'k', b'1', 0x12, 0x03, b'a', b'b', b'c']);
    }

    #[test]
    fn range_request_carries_only_the_key() {
        assert_eq!(range_request(b"key"), [0x0a, 0x03, b'k', b'e', b'y']);
    }

    #[test]
    fn long_fields_use_multi_byte_varint_lengths() {
        let value = vec![b'x'; 300];
        let message = put_request(b"k", &value);
        // 300 = 0b1_0010_1100 -> 0xac 0x02
        assert_eq!(&message[3..6], &[0x12, 0xac, 0x02]);
        assert_eq!(message.len(), 3 + 3 + 300);
        let decoded = fields(&message).unwrap();
        assert_eq!(decoded[1], (2, FieldValue::Bytes(&value)));
    }

    #[test]
    fn frame_prefixes_flag_and_big_endian_length() {
        let framed = frame(&[1, 2, 3]);
        assert_eq!(framed, [0, 0, 0, 0, 3, 1, 2, 3]);
        assert_eq!(unframe(&framed).unwrap(), &[1, 2, 3]);
        assert_eq!(unframe(&frame(&[])).unwrap(), &[] as &[u8]);
    }

    #[test]
    fn unframe_rejects_bad_frames() {
        assert_eq!(unframe(&[0, 0, 0]), Err(DecodeError::Truncated));
        assert_eq!(unframe(&[0, 0, 0, 0, 4, 1]), Err(DecodeError::Truncated));
        assert_eq!(unframe(&[1, 0, 0, 0, 0]), Err(DecodeError::Compressed));
        assert_eq!(unframe(&[0, 0, 0, 0, 1, 9, 9]), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn status_response_finds_member_leader_and_term() {
        // header { cluster_id: 7 member_id: 0x1234_5678_9abc revision: 5 raft_term: 2 }
        let mut header = Vec::new();
        put_varint(&mut header, 1 << 3);
        put_varint(&mut header, 7);
        put_varint(&mut header, 2 << 3);
        put_varint(&mut header, 0x1234_5678_9abc);
        put_varint(&mut header, 3 << 3);
        put_varint(&mut header, 5);
        let mut message = Vec::new();
        put_bytes_field(&mut message, 1, &header);
        put_bytes_field(&mut message, 2, b"3.4.23");
        put_varint(&mut message, 3 << 3); // dbSize
        put_varint(&mut message, 20480);
        put_varint(&mut message, 4 << 3); // leader
        put_varint(&mut message, u64::MAX);
        put_varint(&mut message, 6 << 3); // raftTerm
        put_varint(&mut message, 2);
        assert_eq!(
            status_response(&message).unwrap(),
            MemberStatus { member_id: 0x1234_5678_9abc, leader: u64::MAX, raft_term: 2 }
        );
    }

    #[test]
    fn range_values_reads_every_key_value() {
        let mut key_value = Vec::new();
        put_bytes_field(&mut key_value, 1, b"k");
        put_varint(&mut key_value, 2 << 3); // create_revision
        put_varint(&mut key_value, 9);
        put_bytes_field(&mut key_value, 5, b"v1");
        let mut message = Vec::new();
        put_bytes_field(&mut message, 1, &[]); // empty header
        put_bytes_field(&mut message, 2, &key_value);
        put_varint(&mut message, 4 << 3); // count
        put_varint(&mut message, 1);
        assert_eq!(range_values(&message).unwrap(), vec![b"v1".to_vec()]);
        assert_eq!(range_values(&[]).unwrap(), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn decoder_refuses_garbage() {
        assert_eq!(fields(&[0x0a, 0x05, 1]), Err(DecodeError::Truncated));
        assert_eq!(fields(&[0x0b]), Err(DecodeError::UnknownWireType(3)));
        assert_eq!(fields(&[0x08]), Err(DecodeError::Truncated));
        assert_eq!(
            fields(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(DecodeError::VarintOverflow)
        );
    }
}
