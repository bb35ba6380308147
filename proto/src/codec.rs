//! The codec of every gatemesh gRPC service: prost, with a small initial
//! buffer per stream.
//!
//! tonic's default gives each stream an 8 KiB encode buffer and an 8 KiB
//! decode buffer up front, and keeps them for the stream's life. A gateway
//! holds one `RegisterGateway` stream per instance, mostly idle, so those
//! buffers were the largest part of its memory per instance. Starting at
//! 1 KiB, a buffer grows to the frames it actually carries (and is reused
//! after that), so a busy stream costs the same and an idle one much less.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Initial encode and decode buffer of one stream.
const BUFFER_SIZE: usize = 1024;
/// tonic's default: encoded messages are sent in chunks of at most this.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

/// `tonic_prost::ProstCodec` with [`BUFFER_SIZE`] initial buffers; named in
/// `build.rs` as the generated services' codec.
#[derive(Debug, Clone)]
pub struct ProstCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ProstCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for ProstCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}

/// A pass-through codec: messages stay encoded bytes both ways. The
/// gateway serves every mesh method with it (it routes payloads, it never
/// needs to decode them), and a client can call any method with it.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesCodec;

/// [`BytesCodec`]'s two halves.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesCoder;

impl Codec for BytesCodec {
    type Encode = bytes::Bytes;
    type Decode = bytes::Bytes;
    type Encoder = BytesCoder;
    type Decoder = BytesCoder;

    fn encoder(&mut self) -> Self::Encoder {
        BytesCoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesCoder
    }
}

impl tonic::codec::Encoder for BytesCoder {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put(dst, item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}

impl tonic::codec::Decoder for BytesCoder {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<bytes::Bytes>, tonic::Status> {
        use bytes::Buf as _;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}
