//! Compiles `proto/corral/v1/*.proto` and Corral's Mesos v1 subset (`proto/mesos/v1/*.proto`)
//! in pure Rust (protox), so building needs no `protoc`. The Mesos files' descriptors are
//! also written to `$OUT_DIR/mesos_v1.bin`: their JSON form (Mesos' HTTP APIs speak JSON
//! too) is derived from them at run time (`corral_proto::mesos::json`).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from("proto");
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("corral/v1"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "proto"));
    files.sort();
    println!("cargo:rerun-if-changed=proto");
    let mesos = [
        root.join("mesos/v1/mesos.proto"),
        root.join("mesos/v1/executor.proto"),
        root.join("mesos/v1/scheduler.proto"),
        root.join("mesos/v1/master.proto"),
    ];
    let mesos_fds = protox::compile(&mesos, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("mesos_v1.bin"), prost::Message::encode_to_vec(&mesos_fds))?;
    files.extend(mesos);
    let fds = protox::compile(&files, [&root])?;
    tonic_prost_build::configure()
        // Maps as BTreeMap: prost encodes a map in its iteration order, and a HashMap's order
        // differs between processes, so a TaskInfo with labels or environment variables
        // would encode (and hash) differently on every master (S3).
        .btree_map(".")
        // Bodies that fail to decode are the client's fault: INVALID_ARGUMENT, not tonic's
        // default INTERNAL (see `codec`).
        .codec_path("crate::codec::StrictCodec")
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;
    Ok(())
}
