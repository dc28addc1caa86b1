//! Placeholder until the simulator lands.
#![allow(missing_docs)]
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    #[arg(long, default_value_t = 4010)]
    pub port: u16,
}
pub struct SimConfig {
    pub tokens: Vec<String>,
}
impl SimArgs {
    pub fn config(&self) -> anyhow::Result<SimConfig> {
        Ok(SimConfig { tokens: vec![] })
    }
}
pub struct Sim;
impl Sim {
    pub fn new(_c: SimConfig) -> Sim {
        Sim
    }
}
pub async fn serve(
    _l: tokio::net::TcpListener,
    _s: Sim,
    _f: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    Ok(())
}
