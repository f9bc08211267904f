# Latent stores: encode the validated data set once with the fine-tuned VA-VAE.


rule extract_latents:
    input:
        manifest="results/dataset/manifest.csv",
        vae="results/vae/vavae.pt",
    output:
        train=directory("results/latents/train.zarr"),
        val=directory("results/latents/val.zarr"),
    log:
        "results/logs/extract_latents.log",
    benchmark:
        "results/benchmarks/extract_latents.tsv"
    conda:
        "../envs/mdgen.yaml"
    threads: 4
    resources:
        **gpu_resources("extract_latents", "latents"),
    params:
        out_dir=lambda wildcards, output: Path(output.train).parent,
        config=stage_config("latents"),
    shell:
        "python -m mdgen.stages.extract_latents --manifest {input.manifest} --vae {input.vae}"
        " --out-dir {params.out_dir} --config {params.config:q} > {log} 2>&1"
