plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "org.edgevit.demo"
    compileSdk = 34
    defaultConfig {
        applicationId = "org.edgevit.demo"
        minSdk = 26
        targetSdk = 34
        versionCode = 1
        versionName = "0.1"
    }
    buildFeatures { viewBinding = true }
    androidResources { noCompress += listOf("tflite", "onnx") }   // memory-map the model from assets
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }
}

dependencies {
    implementation("com.google.ai.edge.litert:litert:1.0.1")              // LiteRT (TFLite) runtime
    implementation("com.microsoft.onnxruntime:onnxruntime-android:1.19.2")  // ONNX Runtime Mobile
    implementation("androidx.appcompat:appcompat:1.7.0")
    implementation("androidx.activity:activity-ktx:1.9.2")
    implementation("com.google.android.material:material:1.12.0")
}
