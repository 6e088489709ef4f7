"""The face of the toolchain: the `grok1` command line and the pipeline that chains download,
convert or quantize, verify and upload. The only package that imports `converter`, `quant` and
`verify` together; each command body calls one library function."""
