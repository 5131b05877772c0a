//! Compiles the `.proto` files with a vendored protoc, so no system protoc is needed, and
//! writes the file descriptor set that the reflection service serves.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/snowflake/v1/snowflake.proto",
    "proto/gizzard/v1/gizzard.proto",
    "proto/tbird/v1/tbird.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        // Decode failures are the caller's: INVALID_ARGUMENT (see src/codec.rs).
        .codec_path("crate::codec::Codec")
        .file_descriptor_set_path(out_dir.join("descriptor.bin"))
        .compile_protos(PROTOS, &["proto"])?;
    Ok(())
}
