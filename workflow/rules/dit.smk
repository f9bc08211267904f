# Diffusion stages: train the class-conditional LightningDiT on the latents, then sample every user.


rule train_dit:
    input:
        train="results/latents/train.zarr",
        val="results/latents/val.zarr",
        vae="results/vae/vavae.pt",
    output:
        dit="results/dit/dit.pt",
        metrics="results/dit/metrics.csv",
        curves="results/dit/curves.png",
    log:
        "results/logs/train_dit.log",
    benchmark:
        "results/benchmarks/train_dit.tsv"
    conda:
        "../envs/mdgen.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=32000,
        runtime=3 * 24 * 60,
    params:
        latents=lambda wildcards, input: Path(input.train).parent,
        out_dir=lambda wildcards, output: Path(output.dit).parent,
        config=stage_config("dit"),
    shell:
        "python -m mdgen.train_dit --latents {params.latents} --vae {input.vae}"
        " --out-dir {params.out_dir} --config {params.config:q} > {log} 2>&1"


rule sample:
    input:
        dit="results/dit/dit.pt",
        vae="results/vae/vavae.pt",
    output:
        grid="results/samples/grid.png",
        users=directory(expand("results/samples/{user}", user=USERS)),
    log:
        "results/logs/sample.log",
    benchmark:
        "results/benchmarks/sample.tsv"
    conda:
        "../envs/mdgen.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=12 * 60,
    params:
        out_dir=lambda wildcards, output: Path(output.grid).parent,
        config=stage_config("sample"),
    shell:
        "python -m mdgen.sample --dit {input.dit} --vae {input.vae} --out-dir {params.out_dir}"
        " --config {params.config:q} > {log} 2>&1"
