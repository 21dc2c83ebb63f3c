//! ringway-tls: TLS termination and TLS to upstreams, over monoio's IO traits.
//!
//! Empty on purpose: TLS is the subject of its own issue and nothing here may
//! pretend to work before then. The engine is generic over
//! `AsyncReadRent + AsyncWriteRent`, so a TLS stream will plug in where a
//! `TcpStream` does today.
#![forbid(unsafe_code)]
