//! A put, a get, a shopping cart and a typed error, against the cluster `cartwheel up` runs.

use std::path::Path;

use cartwheel::{Credentials, Error, Op, SharedClient, Value};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `up` writes admin credentials (a token and the cluster CA's certificate) here.
    let credentials = Credentials::load(Path::new("data/admin.credentials"))?;
    let client = SharedClient::connect("127.0.0.1:7401", &credentials).await?;

    // A put replaces what its context saw (an empty context is a blind write).
    let seen = client.get("default", b"greeting").await?;
    client.put("default", b"greeting", b"hello", &seen.context).await?;
    if let Some(Value::Siblings(values)) = client.get("default", b"greeting").await?.value {
        println!("greeting: {}", String::from_utf8_lossy(&values[0]));
    }

    // CRDT buckets take operations; `update` answers with the merged value.
    let apples = Op::CartAdd { item: b"apple".to_vec(), quantity: 2 };
    let cart = client.update("carts", b"alice", &[apples], &[]).await?;
    if let Some(Value::Cart(items)) = cart.value {
        for (item, quantity) in items {
            println!("cart: {} x{quantity}", String::from_utf8_lossy(&item));
        }
    }

    // Errors are typed, and say what to do next.
    match client.get("no-such-bucket", b"k").await {
        Err(Error::UnknownBucket(message)) => println!("refused: {message}"),
        Err(e) if e.is_retryable() => println!("try again later: {e}"),
        other => println!("unexpected: {other:?}"),
    }
    Ok(())
}
