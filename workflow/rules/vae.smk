# VA-VAE stages: fine-tune (or train) the autoencoder, then measure its reconstructions.


rule finetune_vae:
    input:
        manifest="results/dataset/manifest.csv",
        pretrained=pretrained_files("vae"),
        teacher=vf_teacher(),
    output:
        vae="results/vae/vavae.pt",
        metrics="results/vae/metrics.csv",
        curves=report(
            "results/vae/curves.png",
            caption="../report/vae_curves.rst",
            category="VA-VAE",
        ),
    log:
        "results/logs/finetune_vae.log",
    benchmark:
        "results/benchmarks/finetune_vae.tsv"
    conda:
        "../envs/mdgen.yaml"
    threads: 4
    resources:
        **gpu_resources("finetune_vae", "vae"),
    params:
        launch=launcher("vae"),
        out_dir=lambda wildcards, output: Path(output.vae).parent,
        config=stage_config(*vae_sections()),
        teacher=lambda wildcards, input: (
            f"--teacher {input.teacher}" if input.teacher else ""
        ),
    shell:
        "{params.launch} -m mdgen.stages.finetune_vae --manifest {input.manifest} --out-dir {params.out_dir}"
        " --config {params.config:q} {params.teacher} > {log} 2>&1"


rule evaluate_vae:
    input:
        manifest="results/dataset/manifest.csv",
        vae="results/vae/vavae.pt",
        pretrained=pretrained_files("vae"),
    output:
        metrics="results/vae/eval.json",
        judges="results/eval/judges.pt",
        # the reconstructions of real train and val as the judges see them: evaluate_generation's
        # check for copied latents
        reconstructions="results/vae/reconstructions.pt",
        # the decoder's noise model (decode.noise), fitted on train: the sample rules draw from it
        noise="results/vae/decoder_noise.json",
        figure=report(
            "results/vae/reconstructions.png",
            caption="../report/vae_reconstructions.rst",
            category="VA-VAE",
        ),
    log:
        "results/logs/evaluate_vae.log",
    benchmark:
        "results/benchmarks/evaluate_vae.tsv"
    conda:
        "../envs/mdgen.yaml"
    threads: 4
    resources:
        **gpu_resources("evaluate_vae", "vae", one_process=True),
    params:
        # The identity table trains the evaluation classifier (the judges evaluate_generation
        # reuses): its seeds and recipe.
        config=stage_config("vae", "decode", evaluation=("seeds", "classifier")),
    shell:
        "python -m mdgen.stages.evaluate_vae --manifest {input.manifest} --vae {input.vae}"
        " --config {params.config:q} --out-json {output.metrics} --out-png {output.figure}"
        " --out-judges {output.judges} --out-reconstructions {output.reconstructions}"
        " --out-noise {output.noise} > {log} 2>&1"
