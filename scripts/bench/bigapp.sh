# Sourced by scripts/bench-resolve.sh and scripts/bench.sh: builds, once, a large Rust binary
# (>= 100 MB of .debug_info) from a crate with many dependencies from crates.io (syn, tokio,
# cranelift, naga, image, reqwest/rustls, regex, clap, ...) at debug=2, and a patch library for
# it. The first run downloads and compiles them (tens of minutes on two cores); later runs reuse
# the build. Expects WORK (where to build); sets BIN (the binary; `BIN --serve` is a process to
# patch, answering `call N` with `calc N R`) and FIX (the patch library: x*1000).
CRATE=$WORK/bigapp
mkdir -p "$CRATE/src"
cat >"$CRATE/Cargo.toml.new" <<'EOF'
[package]
name = "bigapp"
version = "0.1.0"
edition = "2021"
publish = false

[dependencies]
syn = { version = "2", features = ["full", "extra-traits", "visit", "visit-mut", "fold", "parsing", "printing"] }
proc-macro2 = "1"
quote = "1"
regex = "1"
serde = { version = "1", features = ["derive"] }
serde_json = "1"
tokio = { version = "1", features = ["full"] }
clap = { version = "4", features = ["derive"] }
cranelift-codegen = "0.120"
cranelift-frontend = "0.120"
wasmparser = "0.230"
gimli = "0.31"
object = "0.36"
image = "0.25"
reqwest = { version = "0.12", default-features = false, features = ["blocking", "rustls-tls", "json"] }
rayon = "1"
toml = "0.8"
chrono = "0.4"
naga = { version = "25", features = ["wgsl-in", "spv-out", "wgsl-out", "msl-out", "hlsl-out", "glsl-out"] }

# Optimised like a release build (so functions get inlined), with full debug info.
[profile.dev]
debug = 2
opt-level = 1

[workspace]
EOF
cat >"$CRATE/src/main.rs.new" <<'EOF'
//! bigapp: uses many large crates so that its DWARF is big; `bigapp::pricing::calc` is the
//! function the benchmark resolves.
use std::hint::black_box;
mod pricing { #[inline(never)] pub fn calc(x: u64) -> u64 { x.wrapping_mul(3) + 1 } }
struct Id;
impl syn::fold::Fold for Id {}
impl syn::visit_mut::VisitMut for Id {}
fn main() {
    if std::env::args().nth(1).as_deref() == Some("--serve") {
        return serve();
    }
    let src = std::env::args().nth(1).unwrap_or_default();
    let file: syn::File = syn::parse_str(&src).unwrap_or_else(|_| syn::parse_quote! { fn f() {} });
    let mut f2 = syn::fold::fold_file(&mut Id, file.clone());
    syn::visit_mut::visit_file_mut(&mut Id, &mut f2);
    println!("{:?} {}", file == f2, quote::quote!(#file));
    println!("{:?}", regex::Regex::new(&src).ok().map(|r| r.is_match("abc")));
    let v: serde_json::Value = serde_json::from_str(&src).unwrap_or_default();
    println!("{v}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{:?}", l.local_addr());
        tokio::fs::read("/etc/hostname").await.ok();
    });
    println!("{:?}", clap::Command::new("x").arg(clap::Arg::new("a")).get_matches_from(["x"]));
    use cranelift_codegen::ir::{types, AbiParam, Function, InstBuilder, Signature, UserFuncName};
    use cranelift_codegen::settings::{self, Configurable};
    let mut sig = Signature::new(cranelift_codegen::isa::CallConv::SystemV);
    sig.params.push(AbiParam::new(types::I64));
    sig.returns.push(AbiParam::new(types::I64));
    let mut func = Function::with_name_signature(UserFuncName::user(0, 0), sig);
    let mut fctx = cranelift_frontend::FunctionBuilderContext::new();
    {
        let mut b = cranelift_frontend::FunctionBuilder::new(&mut func, &mut fctx);
        let blk = b.create_block();
        b.append_block_params_for_function_params(blk);
        b.switch_to_block(blk);
        b.seal_block(blk);
        let x = b.block_params(blk)[0];
        let y = b.ins().iadd(x, x);
        b.ins().return_(&[y]);
        b.finalize();
    }
    let mut flags = settings::builder();
    flags.set("opt_level", "speed").unwrap();
    let isa = cranelift_codegen::isa::lookup_by_name("x86_64").unwrap().finish(settings::Flags::new(flags)).unwrap();
    let mut ctx = cranelift_codegen::Context::for_function(func);
    let mut cp = cranelift_codegen::control::ControlPlane::default();
    println!("{:?}", ctx.compile(&*isa, &mut cp).map(|c| c.code_buffer().len()).ok());
    for p in wasmparser::Parser::new(0).parse_all(src.as_bytes()) { println!("{:?}", p.is_ok()); }
    let bytes = std::fs::read("/proc/self/exe").unwrap();
    let obj = object::File::parse(&*bytes).unwrap();
    use object::{Object, ObjectSection};
    if let Some(s) = obj.section_by_name(".debug_info") {
        let d = gimli::DebugInfo::new(s.data().unwrap(), gimli::LittleEndian);
        let mut u = d.units();
        while let Ok(Some(h)) = u.next() { black_box(h); }
    }
    if let Ok(img) = image::load_from_memory(src.as_bytes()) {
        let small = img.resize(16, 16, image::imageops::FilterType::Lanczos3);
        let mut out = std::io::Cursor::new(Vec::new());
        for f in [image::ImageFormat::Png, image::ImageFormat::Jpeg, image::ImageFormat::Gif,
                  image::ImageFormat::Tiff, image::ImageFormat::WebP] {
            small.write_to(&mut out, f).ok();
        }
        println!("{}", out.get_ref().len());
    }
    if src.starts_with("http") {
        println!("{:?}", reqwest::blocking::get(&src).and_then(|r| r.json::<serde_json::Value>()).is_ok());
    }
    use rayon::prelude::*;
    println!("{}", (0..src.len() as u64 + 1000).into_par_iter().map(|x| x * x).sum::<u64>());
    let t: Result<toml::Value, _> = toml::from_str(&src);
    println!("{:?}", t.map(|v| toml::to_string(&v).ok()));
    println!("{}", chrono::Utc::now().to_rfc3339());
    if let Ok(module) = naga::front::wgsl::parse_str(&src) {
        let mut v = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
        if let Ok(info) = v.validate(&module) {
            println!("{:?}", naga::back::spv::write_vec(&module, &info, &Default::default(), None).map(|w| w.len()).ok());
            println!("{:?}", naga::back::wgsl::write_string(&module, &info, naga::back::wgsl::WriterFlags::empty()).ok());
            println!("{:?}", naga::back::msl::write_string(&module, &info, &Default::default(), &Default::default()).ok().map(|x| x.0));
            let mut hlsl = String::new();
            let options = naga::back::hlsl::Options::default();
            let mut w = naga::back::hlsl::Writer::new(&mut hlsl, &options);
            println!("{:?}", w.write(&module, &info, None).is_ok());
        }
    }
    println!("{}", pricing::calc(black_box(3)));
}
/// `bigapp --serve`: prints `ready PID`, then answers `call N` with `calc N R` (R =
/// pricing::calc(N)) until stdin ends: a long-running process of the large build to patch.
fn serve() {
    use std::io::BufRead;
    println!("ready {}", std::process::id());
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let n: u64 = line.trim().strip_prefix("call ").and_then(|v| v.parse().ok()).unwrap_or(0);
        println!("calc {n} {}", pricing::calc(black_box(n)));
    }
}
EOF
for f in Cargo.toml src/main.rs; do
  cmp -s "$CRATE/$f.new" "$CRATE/$f" 2>/dev/null && rm "$CRATE/$f.new" || mv "$CRATE/$f.new" "$CRATE/$f"
done
echo "building the large binary (the first time downloads and compiles ~250 crates)..." >&2
cargo build --quiet --manifest-path "$CRATE/Cargo.toml" --target-dir "$WORK/target"
BIN=$WORK/target/debug/bigapp

# The patch library for it: a cdylib of the same crate name whose pricing::calc returns x*1000.
FIXCRATE=$WORK/bigapp-fix
mkdir -p "$FIXCRATE/src"
cat >"$FIXCRATE/Cargo.toml" <<'EOF'
[package]
name = "bigapp-fix"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
name = "bigapp"
crate-type = ["cdylib"]

[profile.dev]
debug = 2
opt-level = 1

[workspace]
EOF
cat >"$FIXCRATE/src/lib.rs" <<'EOF'
//! The patch for bigapp: `bigapp::pricing::calc` returns x*1000.
pub mod pricing {
    #[no_mangle]
    pub fn calc(x: u64) -> u64 {
        x * 1000
    }
}
EOF
cargo build --quiet --manifest-path "$FIXCRATE/Cargo.toml" --target-dir "$WORK/target"
FIX=$WORK/target/debug/libbigapp.so
