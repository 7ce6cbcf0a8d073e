fn main() {
    println!("cargo:rerun-if-changed=proto/agent.proto");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("api");
    std::fs::create_dir_all(&out).expect("creating OUT_DIR/api");
    ttrpc_codegen::Codegen::new()
        .out_dir(&out)
        .input("proto/agent.proto")
        .include("proto")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            gen_mod: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(true))
        .run()
        .expect("generating the agent API from proto/agent.proto");
    // The generated mod.rs opens with inner attributes, which include!
    // cannot take: the crate includes this list of its modules instead.
    std::fs::write(
        out.join("modules.rs"),
        "pub mod agent;\npub mod agent_ttrpc;\n",
    )
    .expect("writing OUT_DIR/api/modules.rs");
}
