//! Compiles `proto/concord/v1` into prost types with pbjson serde impls, without a system protoc.

use std::{env, error::Error, fs, path::PathBuf};

use protox::{prost::Message as _, prost_reflect::prost_types::FileDescriptorSet};

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto").canonicalize()?;
    let schema_dir = proto_root.join("concord/v1");
    // Cargo scans a directory recursively, so added and edited files both count.
    println!("cargo:rerun-if-changed={}", proto_root.display());

    // Sorted so the descriptor set, and hence the generated code, is reproducible.
    let mut files = Vec::new();
    for entry in fs::read_dir(&schema_dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "proto") {
            files.push(path);
        }
    }
    files.sort();

    let descriptors = protox::compile(&files, [&proto_root])?;
    let encoded = descriptors.encode_to_vec();
    write_message_names(&descriptors)?;

    // `compile_well_known_types` only switches off prost's own mapping of
    // `.google.protobuf` to prost-types, so that pbjson-types can take it.
    // BTreeMap keeps map fields, and so the encoded bytes and JSON, in a
    // stable order: signatures and golden files depend on it.
    prost_build::Config::new()
        .compile_well_known_types()
        .enable_type_names()
        .extern_path(".google.protobuf", "::pbjson_types")
        .btree_map(["."])
        .bytes([".concord.v1.DeadLetter.payload"])
        .compile_fds(descriptors)?;

    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .extern_path(".google.protobuf", "::pbjson_types")
        .btree_map(["."])
        .build(&[".concord.v1"])?;

    Ok(())
}

/// Writes the full names of all `concord.v1` messages to `$OUT_DIR/message_names.rs`
/// (a `&[&str]` expression), so the tests can check that they cover every message.
fn write_message_names(descriptors: &FileDescriptorSet) -> Result<(), Box<dyn Error>> {
    let mut names: Vec<String> = descriptors
        .file
        .iter()
        .filter(|file| file.package() == "concord.v1")
        .flat_map(|file| file.message_type.iter())
        .map(|message| format!("concord.v1.{}", message.name()))
        .collect();
    names.sort();
    let out = PathBuf::from(env::var("OUT_DIR")?).join("message_names.rs");
    fs::write(out, format!("&{names:?}"))?;
    Ok(())
}
