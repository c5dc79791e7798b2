"""The embedded model that the demo and the tests run on: built by tiny_model, shipped in
models/ and checked against models/embedded.json by manifest (``make embedded``)."""
