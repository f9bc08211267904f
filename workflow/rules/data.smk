# Data stages: simulate the built-in data set (optional), then validate whatever data is used.


rule simulate_dataset:
    output:
        train=directory(f"{SYNTHETIC_ROOT}/train"),
        val=directory(f"{SYNTHETIC_ROOT}/val"),
        users=f"{SYNTHETIC_ROOT}/users.json",
    log:
        "results/logs/simulate_dataset.log",
    benchmark:
        "results/benchmarks/simulate_dataset.tsv"
    conda:
        "../envs/mdgen.yaml"
    threads: 8
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        out=lambda wildcards, output: Path(output.users).parent,
        num_users=config["data"]["num_classes"],
        size=config["data"]["size"],
        channels=config["data"]["channels"],
        sim=config["simulator"],
    shell:
        "python -m mdgen.stages.simulate_dataset --out {params.out} --workers {threads}"
        " --num-users {params.num_users} --size {params.size} --channels {params.channels}"
        " --seed {params.sim[seed]} --train-per-user {params.sim[train_per_user]}"
        " --val-per-user {params.sim[val_per_user]}"
        " --gait-variability {params.sim[gait_variability]}"
        " --carrier-ghz {params.sim[carrier_ghz]} --prf-hz {params.sim[prf_hz]}"
        " --duration-s {params.sim[duration_s]} --window-ms {params.sim[window_ms]}"
        " --overlap {params.sim[overlap]} --dynamic-range-db {params.sim[dynamic_range_db]}"
        " > {log} 2>&1"


rule validate_dataset:
    input:
        dataset_files,
    output:
        manifest="results/dataset/manifest.csv",
        report="results/dataset/report.json",
    log:
        "results/logs/validate_dataset.log",
    benchmark:
        "results/benchmarks/validate_dataset.tsv"
    conda:
        "../envs/mdgen.yaml"
    threads: 4
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        root=dataset_root(),
        data=config["data"],
    shell:
        "python -m mdgen.stages.validate_dataset --root {params.root:q} --workers {threads}"
        " --num-classes {params.data[num_classes]} --size {params.data[size]}"
        " --channels {params.data[channels]} --on-bad-file {params.data[on_bad_file]}"
        " --max-pixels {params.data[max_pixels]}"
        " --manifest {output.manifest} --report {output.report} > {log} 2>&1"
