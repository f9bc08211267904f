# Diffusion stages: train the class-conditional LightningDiT on the latents, then sample every user.


rule train_dit:
    input:
        **dit_inputs("results/teacher/teacher.pt"),
        pretrained=pretrained_files("dit"),
        train="results/latents/train.zarr",
        val="results/latents/val.zarr",
        vae="results/vae/vavae.pt",
    output:
        dit="results/dit/dit.pt",
        metrics="results/dit/metrics.csv",
        curves=report(
            "results/dit/curves.png",
            caption="../report/dit_curves.rst",
            category="LightningDiT",
        ),
    log:
        "results/logs/train_dit.log",
    benchmark:
        "results/benchmarks/train_dit.tsv"
    conda:
        "../envs/mdgen.yaml"
    threads: 4
    resources:
        **gpu_resources("train_dit", "dit"),
    params:
        launch=launcher("dit"),
        latents=lambda wildcards, input: Path(input.train).parent,
        out_dir=lambda wildcards, output: Path(output.dit).parent,
        config=dit_config(),
        subset="",
        alignment=alignment_args,
    shell:
        "{params.launch} -m mdgen.stages.train_dit --latents {params.latents} --vae {input.vae}"
        " --out-dir {params.out_dir} --config {params.config:q} {params.subset} {params.alignment} > {log} 2>&1"


rule sample:
    input:
        dit="results/dit/dit.pt",
        vae="results/vae/vavae.pt",
        noise="results/vae/decoder_noise.json",
    output:
        grid=report(
            "results/samples/grid.png",
            caption="../report/sample_grid.rst",
            category="Samples",
        ),
        users=directory(expand("results/samples/{user}", user=USERS)),
    log:
        "results/logs/sample.log",
    benchmark:
        "results/benchmarks/sample.tsv"
    conda:
        "../envs/mdgen.yaml"
    threads: 4
    resources:
        **gpu_resources("sample", "sample"),
    params:
        launch=launcher("sample"),
        out_dir=lambda wildcards, output: Path(output.grid).parent,
        config=stage_config("sample", "decode"),
    shell:
        "{params.launch} -m mdgen.stages.sample --dit {input.dit} --vae {input.vae} --decoder-noise {input.noise}"
        " --out-dir {params.out_dir} --config {params.config:q} > {log} 2>&1"


# The low-data study (evaluation.low_data_k): a DiT of its own on k train latents per user, so that
# a classifier given those k real images per user gets samples of a generator that saw only them.


use rule train_dit as train_dit_low_data with:
    input:
        **dit_inputs("results/lowdata/k{k}/teacher/teacher.pt"),
        pretrained=pretrained_files("dit"),
        train="results/latents/train.zarr",
        val="results/latents/val.zarr",
        vae="results/vae/vavae.pt",
    output:
        dit="results/lowdata/k{k}/dit/dit.pt",
        metrics="results/lowdata/k{k}/dit/metrics.csv",
        curves="results/lowdata/k{k}/dit/curves.png",
    log:
        "results/logs/train_dit_k{k}.log",
    benchmark:
        "results/benchmarks/train_dit_k{k}.tsv"
    params:
        launch=launcher("dit"),
        latents=lambda wildcards, input: Path(input.train).parent,
        out_dir=lambda wildcards, output: Path(output.dit).parent,
        config=dit_config(),
        subset=lambda wildcards: f"--per-user {wildcards.k} --subset-seed {config['evaluation']['low_data_seed']}",
        alignment=alignment_args,


use rule sample as sample_low_data with:
    input:
        dit="results/lowdata/k{k}/dit/dit.pt",
        vae="results/vae/vavae.pt",
        noise="results/vae/decoder_noise.json",
    output:
        grid="results/lowdata/k{k}/samples/grid.png",
        users=directory(expand("results/lowdata/k{{k}}/samples/{user}", user=USERS)),
    log:
        "results/logs/sample_k{k}.log",
    benchmark:
        "results/benchmarks/sample_k{k}.tsv"
